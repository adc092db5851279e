//! Keras's rules for loading a weights file into a model built from a configuration:
//! which of the file's layers gives each model layer its weights ([`WeightMatch`]), and how
//! weights saved by other layer classes or Keras versions are converted on the way in
//! (`preprocess_weights_for_loading` and `_convert_rnn_weights` of Keras 2's HDF5 loader:
//! CuDNNLSTM/CuDNNGRU layouts, Keras 1's per-gate LSTM and GRU weights).
//!
//! In the legacy HDF5 layout (Keras 2's `save_weights("w.h5")`, every `model.save("m.h5")`)
//! the file lists its layers in a `layer_names` attribute and each layer's weights in its
//! group's `weight_names`. Keras's `load_weights` then matches
//! - by **order** (its default): the model's layers that have weights, in the config's
//!   (topological) order, take the file's layers that have weights, in the file's order;
//!   the layer counts must be equal and each pair's weight counts too;
//! - by **name** (`by_name=True`): each model layer takes the file's layer of its name;
//!   the file's other layers are ignored; a count or shape mismatch is an error, or is
//!   skipped with `skip_mismatch=True`.
//!
//! A Keras 3 `.weights.h5` file has no layer names: its groups are named by class and
//! position (`layers/lstm`, `layers/lstm_1`), and Keras 3 loads it by that position, the
//! k-th layer of each class taking the k-th saved one — an order rule, [`WeightMatch::Order`].

use crate::custom::CustomObjects;
use crate::error::{LstmError, Result};
use ndarray::ArrayD;
use serde_json::Value as Json;
use std::collections::HashMap;

mod convert;
pub(crate) use convert::preprocess;

/// How the layers of a weights file are matched to the model's layers
/// ([`crate::model::KerasModel::load_weights_with`]), as Keras's `model.load_weights`.
///
/// ```
/// use lstm_wgpu::model::WeightMatch;
/// // Keras's default for every format: by position.
/// assert_eq!(WeightMatch::default(), WeightMatch::Order);
/// let by_name = WeightMatch::ByName { skip_mismatch: false }; // load_weights(by_name=True)
/// assert_ne!(by_name, WeightMatch::Order);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMatch {
    /// Keras's default. Legacy HDF5: the model's layers with weights, in order, take the
    /// file's layers with weights, in order (names are not compared); the counts must
    /// match. Keras 3 `.weights.h5`: each layer takes the group of its class and position.
    #[default]
    Order,
    /// `load_weights(by_name=True, skip_mismatch=...)`, legacy HDF5 files only: each model
    /// layer takes the file's layer of the same name; the file's other layers are ignored.
    /// A model layer the file lacks, or (with `skip_mismatch`) one whose weights do not fit,
    /// would keep its fresh random weights in Keras; this crate does not run a layer on
    /// random weights, so that is an error naming the layer.
    ByName {
        /// Skip a layer whose weight count or shapes differ instead of failing at once
        /// (Keras's `skip_mismatch`); the skipped layer is then reported as having no
        /// weights.
        skip_mismatch: bool,
    },
}

fn mismatch(layer: &str, reason: impl Into<String>) -> LstmError {
    LstmError::WeightMismatch {
        layer: layer.to_string(),
        reason: reason.into(),
    }
}

fn flag(cfg: &Json, key: &str, default: bool) -> bool {
    cfg.get(key).and_then(Json::as_bool).unwrap_or(default)
}

/// The name of a layer entry of a model config.
pub(crate) fn entry_name(entry: &Json) -> Option<&str> {
    entry
        .get("name")
        .and_then(Json::as_str)
        .or_else(|| entry.get("config")?.get("name")?.as_str())
}

/// The number of weights Keras creates for the layer `entry` (`{"class_name", "config"}`),
/// as `len(layer.weights)`: 0 for a layer without weights, None for a class this crate does
/// not know (an application's class counts as the application says, see
/// [`crate::custom::CustomObjects::weight_count`]).
pub(crate) fn weight_count(entry: &Json, custom: &CustomObjects) -> Option<usize> {
    if custom.is_custom(entry) && !is_builtin(entry) {
        return custom.count(entry);
    }
    let weight_count = |e: &Json| weight_count(e, custom);
    let class = entry.get("class_name")?.as_str()?;
    let null = Json::Null;
    let cfg = entry.get("config").unwrap_or(&null);
    let bias = usize::from(flag(cfg, "use_bias", true));
    Some(match class {
        "LSTM" | "GRU" | "SimpleRNN" | "ConvLSTM1D" | "ConvLSTM2D" | "ConvLSTM3D" => 2 + bias,
        "CuDNNLSTM" | "CuDNNGRU" => 3,
        "Dense" | "Conv1D" | "Conv2D" | "Conv3D" => 1 + bias,
        "Embedding" | "PReLU" => 1,
        "BatchNormalization" => {
            2 + usize::from(flag(cfg, "center", true)) + usize::from(flag(cfg, "scale", true))
        }
        "LayerNormalization" => {
            usize::from(flag(cfg, "center", true)) + usize::from(flag(cfg, "scale", true))
        }
        "Attention" => {
            usize::from(flag(cfg, "use_scale", false))
                + usize::from(cfg.get("score_mode").and_then(Json::as_str) == Some("concat"))
        }
        "AdditiveAttention" => usize::from(flag(cfg, "use_scale", true)),
        "MultiHeadAttention" => 4 * (1 + bias),
        // adapted: mean, variance, count; given in the config: none
        "Normalization" => {
            if cfg.get("mean").is_none_or(Json::is_null) {
                3
            } else {
                0
            }
        }
        "Bidirectional" => {
            let forward = weight_count(cfg.get("layer")?)?;
            let backward = match cfg.get("backward_layer") {
                Some(b) if !b.is_null() => weight_count(b)?,
                _ => forward,
            };
            forward + backward
        }
        "TimeDistributed" => weight_count(cfg.get("layer")?)?,
        "LSTMCell" | "GRUCell" | "SimpleRNNCell" => 2 + bias,
        "RNN" => weight_count(cfg.get("cell")?)?,
        "StackedRNNCells" => {
            let mut n = 0;
            for c in cfg.get("cells")?.as_array()? {
                n += weight_count(c)?;
            }
            n
        }
        "Sequential" | "Functional" | "Model" => {
            let mut n = 0;
            for l in cfg.get("layers")?.as_array()? {
                n += weight_count(l)?;
            }
            n
        }
        c if crate::graph::SUPPORTED.contains(&c) => 0,
        _ => return None,
    })
}

/// Whether the crate implements `entry`'s class itself (then an application's class of the
/// same name is not used).
fn is_builtin(entry: &Json) -> bool {
    let class = entry.get("class_name").and_then(Json::as_str).unwrap_or("");
    matches!(class, "CuDNNLSTM" | "CuDNNGRU") || crate::graph::SUPPORTED.contains(&class)
}

/// The top-level layer entries of a model config (`Sequential` or functional).
fn layer_entries(config: &Json) -> Result<&[Json]> {
    config
        .get("config")
        .and_then(|c| c.get("layers"))
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| LstmError::File {
            path: "Keras model".into(),
            reason: "the model config has no layers list".into(),
        })
}

/// Where one model layer's weights come from in a legacy HDF5 file.
#[derive(Debug, Clone)]
enum Target {
    /// The file's layer group `group`, `k`-th of the layers being matched (Keras's `#k`).
    File { group: String, k: usize },
    /// No weights: the layer has none.
    Nothing,
    /// No weights although the layer needs some: why.
    Missing(String),
}

/// A legacy file's layer `name` with the number of weights its group lists.
#[derive(Debug, Clone)]
pub(crate) struct FileLayer {
    /// The group name (the saved layer's name).
    pub name: String,
    /// `len(weight_names)`.
    pub weights: usize,
}

/// How each layer of a model gets its weights from a legacy HDF5 file.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    mode: WeightMatch,
    targets: HashMap<String, Target>,
    entries: HashMap<String, Json>,
    /// Each model layer's weight count (None: whatever the file gives, an application's
    /// class without a count).
    expected: HashMap<String, Option<usize>>,
    /// The file's `keras_version` (`"1"` when absent, as Keras reads it).
    keras_version: String,
}

impl Plan {
    /// Matches the layers of `config` to the file's `layers` (its `layer_names` in order).
    pub(crate) fn new(
        config: &Json,
        layers: &[FileLayer],
        mode: WeightMatch,
        keras_version: &str,
        custom: &CustomObjects,
    ) -> Result<Self> {
        let mut model: Vec<(String, usize, Json)> = Vec::new();
        let mut free: Vec<String> = Vec::new();
        for entry in layer_entries(config)? {
            let class = entry
                .get("class_name")
                .and_then(Json::as_str)
                .unwrap_or("?");
            let name = entry_name(entry).unwrap_or(class).to_string();
            if class == "InputLayer" {
                continue;
            }
            let count = match weight_count(entry, custom) {
                Some(n) => n,
                // an application's class without a count: by name it takes what the file
                // has; by order its count is needed to pair the layers
                None if custom.is_custom(entry) && mode != WeightMatch::Order => {
                    free.push(name.clone());
                    usize::MAX
                }
                // by order: the count of a file layer of the same name (a whole-model file
                // names its layers as the model does)
                None if custom.is_custom(entry) && layers.iter().any(|l| l.name == name) => layers
                    .iter()
                    .find(|l| l.name == name)
                    .map_or(0, |l| l.weights),
                None if custom.is_custom(entry) => {
                    return Err(mismatch(
                        &name,
                        format!(
                            "matching a legacy file's layers by order needs the weight count \
                             of the custom class {class} (the file has no layer named {name} \
                             to take it from): CustomObjects::weight_count"
                        ),
                    ))
                }
                None => {
                    return Err(LstmError::unsupported(
                        format!("layer {name}"),
                        format!(
                            "class {class} (its weights cannot be matched to the file's; \
                             supported: {}; an application's own class is registered with \
                             lstm_wgpu::custom::CustomObjects)",
                            crate::graph::SUPPORTED.join(", ")
                        ),
                    ))
                }
            };
            model.push((name, count, entry.clone()));
        }
        let mut targets = HashMap::new();
        match mode {
            WeightMatch::Order => {
                let saved: Vec<&FileLayer> = layers.iter().filter(|l| l.weights > 0).collect();
                let weighted: Vec<&(String, usize, Json)> =
                    model.iter().filter(|(_, n, _)| *n > 0).collect();
                if saved.len() != weighted.len() {
                    let names = |v: Vec<&str>| v.join(", ");
                    return Err(mismatch(
                        "",
                        format!(
                            "layer count mismatch when loading weights from file: the model \
                             has {} layers with weights ({}), the file {} ({}); \
                             WeightMatch::ByName (Keras's by_name=True) matches them by name",
                            weighted.len(),
                            names(weighted.iter().map(|l| l.0.as_str()).collect()),
                            saved.len(),
                            names(saved.iter().map(|l| l.name.as_str()).collect()),
                        ),
                    ));
                }
                for (name, _, _) in &model {
                    targets.insert(name.clone(), Target::Nothing);
                }
                for (k, (m, f)) in weighted.iter().zip(&saved).enumerate() {
                    targets.insert(
                        m.0.clone(),
                        Target::File {
                            group: f.name.clone(),
                            k,
                        },
                    );
                }
            }
            WeightMatch::ByName { skip_mismatch } => {
                for (name, count, entry) in &model {
                    let found = layers.iter().enumerate().find(|(_, l)| l.name == *name);
                    let target = match found {
                        Some((k, f)) if *count == 0 && f.weights > 0 => {
                            let class = entry.get("class_name").and_then(Json::as_str);
                            let why = format!(
                                "weight count mismatch for layer #{k} (named {name}): layer \
                                 expects 0 weight(s) ({} has none), received {} saved weight(s)",
                                class.unwrap_or("?"),
                                f.weights
                            );
                            if !skip_mismatch {
                                return Err(mismatch(name, why));
                            }
                            log::warn!("skipping the saved weights of {name}: {why}");
                            Target::Nothing
                        }
                        _ if *count == 0 => Target::Nothing,
                        Some((k, f)) => Target::File {
                            group: f.name.clone(),
                            k,
                        },
                        None => Target::Missing(format!(
                            "the weights file has no layer named {name} (matching by name; \
                             its layers: {})",
                            layers
                                .iter()
                                .map(|l| l.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    };
                    targets.insert(name.clone(), target);
                }
            }
        }
        Ok(Plan {
            mode,
            targets,
            expected: model
                .iter()
                .map(|(n, c, _)| (n.clone(), (*c != usize::MAX).then_some(*c)))
                .collect(),
            entries: model.into_iter().map(|(n, _, e)| (n, e)).collect(),
            keras_version: keras_version.to_string(),
        })
    }

    /// The file group holding the weights of model layer `name`, or None when the layer
    /// takes none. A layer that needs weights the file cannot give is an error naming it.
    pub(crate) fn group<'s>(&'s self, name: &'s str) -> Result<Option<&'s str>> {
        match self.targets.get(name) {
            // (not a top-level layer: its own name)
            None => Ok(Some(name)),
            Some(Target::Nothing) => Ok(None),
            Some(Target::File { group, .. }) => Ok(Some(group)),
            Some(Target::Missing(why)) => Err(self.missing(name, why)),
        }
    }

    fn missing(&self, name: &str, why: &str) -> LstmError {
        mismatch(
            name,
            format!(
                "{why}; Keras would keep the layer's random initial weights, and this crate \
                 does not run a layer on random weights"
            ),
        )
    }

    /// How errors about model layer `name` describe it: `layer #k (named X in the model, Y
    /// in the weights file)` when it takes another layer's weights.
    pub(crate) fn describe(&self, name: &str) -> Option<String> {
        match self.targets.get(name)? {
            Target::File { group, k } if group != name => Some(format!(
                "layer #{k} (named {name} in the model, {group} in the weights file)"
            )),
            Target::File { k, .. } => Some(format!("layer #{k} (named {name})")),
            _ => None,
        }
    }

    /// The weights read for model layer `name` from its file group, converted as Keras
    /// converts them on load and checked against the count the layer expects.
    pub(crate) fn finish(&self, name: &str, weights: Vec<ArrayD<f32>>) -> Result<Vec<ArrayD<f32>>> {
        let Some(entry) = self.entries.get(name) else {
            return Ok(weights);
        };
        let weights =
            preprocess(entry, weights, &self.keras_version).map_err(|e| mismatch(name, e))?;
        let expected = self
            .expected
            .get(name)
            .copied()
            .flatten()
            .unwrap_or(weights.len());
        if weights.len() != expected {
            let who = self
                .describe(name)
                .unwrap_or_else(|| format!("layer {name}"));
            let why = format!(
                "weight count mismatch for {who}: layer expects {expected} weight(s), \
                 received {} saved weight(s)",
                weights.len()
            );
            if let WeightMatch::ByName {
                skip_mismatch: true,
            } = self.mode
            {
                log::warn!("skipping the saved weights of {name}: {why}");
                return Err(self.missing(name, &format!("skipped ({why})")));
            }
            return Err(mismatch(name, why));
        }
        Ok(weights)
    }

    /// Whether a shape error about layer `name`'s weights is to be reported as skipped
    /// (`skip_mismatch`): Keras skips such a layer, leaving it without the file's weights.
    pub(crate) fn shape_error(&self, name: &str, e: LstmError) -> LstmError {
        let Some(who) = self.describe(name) else {
            return e;
        };
        let e = match e {
            LstmError::ShapeMismatch {
                what,
                expected,
                actual,
            } => LstmError::ShapeMismatch {
                what: format!("{what} of {who}"),
                expected,
                actual,
            },
            LstmError::MissingWeight { name: w } => LstmError::MissingWeight {
                name: format!("{w} of {who}"),
            },
            other => return other,
        };
        if let WeightMatch::ByName {
            skip_mismatch: true,
        } = self.mode
        {
            log::warn!("skipping the saved weights of {name}: {e}");
            return self.missing(name, &format!("skipped ({e})"));
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_follow_keras() {
        let c = |v: Json| weight_count(&v, &CustomObjects::new());
        assert_eq!(c(json!({"class_name": "LSTM", "config": {}})), Some(3));
        assert_eq!(
            c(json!({"class_name": "GRU", "config": {"use_bias": false}})),
            Some(2)
        );
        assert_eq!(c(json!({"class_name": "Dropout", "config": {}})), Some(0));
        assert_eq!(
            c(
                json!({"class_name": "Bidirectional", "config": {"layer": {"class_name": "LSTM", "config": {}}}})
            ),
            Some(6)
        );
        assert_eq!(
            c(json!({"class_name": "BatchNormalization", "config": {"center": false}})),
            Some(3)
        );
        assert_eq!(
            c(json!({"class_name": "AdditiveAttention", "config": {}})),
            Some(1)
        );
        assert_eq!(c(json!({"class_name": "Lambda", "config": {}})), None);
    }

    /// The cuDNN conversion as numpy computes it:
    /// `np.hstack([k.T.reshape(k.shape, order="F") for k in np.hsplit(kernel, 4)])`.
    #[test]
    fn plans_match_by_order_and_by_name() {
        let config = json!({"class_name": "Sequential", "config": {"layers": [
            {"class_name": "InputLayer", "config": {"name": "in"}},
            {"class_name": "LSTM", "config": {"name": "lstm_3", "units": 2}},
            {"class_name": "Dropout", "config": {"name": "dropout"}},
            {"class_name": "Dense", "config": {"name": "dense_7", "units": 1}}]}});
        let file = |names: &[(&str, usize)]| -> Vec<FileLayer> {
            names
                .iter()
                .map(|(n, w)| FileLayer {
                    name: n.to_string(),
                    weights: *w,
                })
                .collect()
        };
        let f = file(&[("lstm_1", 3), ("dropout_1", 0), ("dense_1", 2)]);
        let none = CustomObjects::new();
        let p = Plan::new(&config, &f, WeightMatch::Order, "2.2.4", &none).unwrap();
        assert_eq!(p.group("lstm_3").unwrap(), Some("lstm_1"));
        assert_eq!(p.group("dense_7").unwrap(), Some("dense_1"));
        assert_eq!(p.group("dropout").unwrap(), None);
        assert!(p
            .describe("dense_7")
            .unwrap()
            .contains("dense_1 in the weights file"));
        let by_name = WeightMatch::ByName {
            skip_mismatch: false,
        };
        let p = Plan::new(&config, &f, by_name, "2.2.4", &none).unwrap();
        let e = p.group("lstm_3").unwrap_err().to_string();
        assert!(e.contains("lstm_3") && e.contains("no layer named"), "{e}");
        let more = file(&[("lstm_1", 3), ("dense_1", 2), ("dense_2", 2)]);
        let e = Plan::new(&config, &more, WeightMatch::Order, "2", &none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the model has 2 layers") && e.contains("the file 3"),
            "{e}"
        );
        assert!(e.contains("dense_2"), "{e}");
    }
}
