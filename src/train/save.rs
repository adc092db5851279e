//! Writing trained weights back as Keras 3 files: `model.weights.h5` in Keras's layout
//! (`layers/<key>/vars/<k>` for a layer's own variables, `layers/<key>/cell/vars/<k>` for a
//! recurrent layer's cell, `layers/<key>/forward_layer/cell/vars/<k>` and `backward_layer`
//! for a Bidirectional one's, an empty `vars` group for the model and for layers without
//! weights; `<key>` the snake-case class name numbered by class, as Keras names them), and a
//! `.keras` archive holding the original model's `config.json` and `metadata.json` with
//! those weights.

use super::h5write::{self, Node};
use super::{Loss, Losses, Optimizer, Sequential, TrainLayer};
use crate::element::Element;
use crate::error::{LstmError, Result};
use serde_json::Value;

fn put<T: Element>(group: &mut Node, k: usize, a: &ndarray::ArrayD<T>) {
    let values: Vec<f64> = a.iter().map(|v| v.to_f64()).collect();
    group.dataset(
        &k.to_string(),
        a.shape(),
        &values,
        if T::is_f32() { 4 } else { 8 },
    );
}

/// How a layer's variables are grouped in the file.
pub(super) enum Saved {
    /// Under `layers/<key>/vars` (or `layers/<key>/layer/vars` for a TimeDistributed).
    Plain,
    /// A recurrent layer's, under `layers/<key>/cell/vars`.
    Cell,
    /// A Bidirectional's: the first `.0` under `forward_layer/cell/vars`, the rest under
    /// `backward_layer/cell/vars`.
    Bidi(usize),
}

/// A chain layer's variables (the trainable ones, then the non-trainable ones, as Keras
/// orders them) and their grouping.
pub(super) fn saved_of<T: Element>(layer: &TrainLayer<T>) -> (Vec<ndarray::ArrayD<T>>, Saved) {
    let mut ws = layer.weights();
    ws.extend(layer.state());
    let saved = match layer {
        TrainLayer::Recurrent { .. } => Saved::Cell,
        TrainLayer::Bidirectional { forward, .. } => {
            Saved::Bidi(2 + usize::from(forward.1.bias.is_some()))
        }
        _ => Saved::Plain,
    };
    (ws, saved)
}

/// The tree of a Keras 3 `.weights.h5` file (for [`h5write::file`]) for the model config
/// `config` whose layers' variables `find` gives by layer name (`count` of them in all: a
/// config naming fewer is not this model's).
#[allow(clippy::type_complexity)]
pub(super) fn weights_tree<T: Element>(
    config: &Value,
    find: &dyn Fn(&str) -> Option<(Vec<ndarray::ArrayD<T>>, Saved)>,
    count: usize,
) -> Result<Node> {
    let null = Value::Null;
    let functional = config.get("class_name").and_then(Value::as_str) != Some("Sequential");
    let layers = config
        .get("config")
        .unwrap_or(&null)
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| LstmError::bad_config("config.layers", "a model config has a layer list"))?;
    let mut root = Node::group();
    root.path("vars");
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut written = 0;
    for entry in layers {
        let class = entry
            .get("class_name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = entry["config"]
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(class);
        if class == "InputLayer" && !functional {
            continue;
        }
        let base = crate::graph::snake_case(class);
        let n = counts.entry(base.clone()).or_insert(0);
        let key = if *n == 0 { base } else { format!("{base}_{n}") };
        *n += 1;
        let at = format!("layers/{key}");
        root.path(&format!("{at}/vars"));
        let Some((ws, saved)) = find(name) else {
            continue;
        };
        written += 1;
        // (group, how many of the layer's weights it holds)
        let groups: Vec<(String, usize)> = match saved {
            Saved::Cell => vec![(format!("{at}/cell/vars"), ws.len())],
            Saved::Bidi(nf) => {
                for d in ["forward_layer", "backward_layer"] {
                    root.path(&format!("{at}/{d}/vars"));
                }
                vec![
                    (format!("{at}/forward_layer/cell/vars"), nf),
                    (format!("{at}/backward_layer/cell/vars"), ws.len() - nf),
                ]
            }
            // (MultiHeadAttention's four projections each under its own group)
            Saved::Plain if class == "MultiHeadAttention" => {
                let per = ws.len() / 4;
                crate::graph::mha::PROJECTIONS
                    .iter()
                    .map(|p| (format!("{at}/{p}/vars"), per))
                    .collect()
            }
            // (a ConvLSTM's variables are its cell's, as a recurrent layer's)
            Saved::Plain if matches!(class, "ConvLSTM1D" | "ConvLSTM2D" | "ConvLSTM3D") => {
                vec![(format!("{at}/cell/vars"), ws.len())]
            }
            // a wrapper's layer is saved under it (TimeDistributed(Dense))
            Saved::Plain if class == "TimeDistributed" => {
                vec![(format!("{at}/layer/vars"), ws.len())]
            }
            Saved::Plain => vec![(format!("{at}/vars"), ws.len())],
        };
        let mut it = ws.iter();
        for (path, count) in groups {
            let group = root.path(&path);
            for (k, w) in it.by_ref().take(count).enumerate() {
                put(group, k, w);
            }
        }
    }
    if written != count {
        return Err(LstmError::invalid(
            "config",
            format!("names {written} of the {count} trained layers; it is not this model's config"),
        ));
    }
    Ok(root)
}

/// A `.keras` file: `original`'s (the `.keras` file the model was loaded from)
/// `config.json` and `metadata.json` with the weights `weights` makes for that config as
/// `model.weights.h5`; with `compiled`, the model compiled: `compiled`'s optimizer and
/// losses as `config.json`'s `compile_config` and the optimizer's variables under
/// `optimizer/vars` (Keras's `load_model` compiles the model and loads them).
pub(super) fn keras_file<T: Element>(
    original: &[u8],
    weights: &dyn Fn(&Value) -> Result<Node>,
    compiled: Option<Compiled<'_, T>>,
) -> Result<Vec<u8>> {
    let members = crate::archive::members(original)?;
    let member = |n: &str| crate::archive::member(&members, n);
    let config_bytes = member("config.json")?;
    let mut config: Value = serde_json::from_slice(config_bytes).map_err(|e| LstmError::File {
        path: "config.json".into(),
        reason: e.to_string(),
    })?;
    let mut root = weights(&config)?;
    let metadata = member("metadata.json")?;
    let config_bytes: Vec<u8> = match compiled {
        None => config_bytes.to_vec(),
        Some(c) => {
            let shapes: Vec<Vec<usize>> = c.weights.iter().map(|w| w.shape().to_vec()).collect();
            let vars = c.optimizer.keras_variables(&shapes)?;
            super::optim_state::put_variables(&mut root, &vars, if T::is_f32() { 4 } else { 8 });
            let cc = super::compile::compile_config(
                config.get("compile_config").filter(|v| !v.is_null()),
                c.optimizer,
                c.losses,
            );
            match config.as_object_mut() {
                Some(m) => m.insert("compile_config".into(), cc),
                None => return Err(LstmError::bad_config("config.json", "an object")),
            };
            serde_json::to_vec(&config).map_err(|e| LstmError::File {
                path: "config.json".into(),
                reason: e.to_string(),
            })?
        }
    };
    crate::archive::write(&[
        ("metadata.json", metadata),
        ("config.json", &config_bytes),
        ("model.weights.h5", &h5write::file(&root)),
    ])
}

/// What a compiled `.keras` file carries beside the weights: the optimizer (its state for
/// the trainable weights `weights`) and the losses.
pub(super) struct Compiled<'a, T> {
    pub(super) optimizer: &'a Optimizer,
    pub(super) losses: &'a Losses,
    pub(super) weights: Vec<ndarray::ArrayD<T>>,
}

impl<T: Element> Sequential<T> {
    /// The weights as a Keras 3 `.weights.h5` file for the model whose `config.json` is
    /// `config` (`model.load_weights` reads it; the values are written in `T`).
    pub fn weights_h5(&self, config: &Value) -> Result<Vec<u8>> {
        Ok(h5write::file(&self.weights_tree(config)?))
    }

    /// A `.keras` file: `original`'s (the `.keras` file the model was loaded from)
    /// `config.json` and `metadata.json` with these weights as `model.weights.h5`
    /// (`keras.saving.load_model` reads it).
    pub fn keras_file(&self, original: &[u8]) -> Result<Vec<u8>> {
        keras_file::<T>(original, &|config| self.weights_tree(config), None)
    }

    /// [`Sequential::keras_file`] compiled: `optimizer` (and its state) and `loss` as the
    /// file's `compile_config` and `optimizer/vars`, so Keras's `load_model` followed by
    /// `fit` goes on where this training left off (and [`Optimizer::from_keras_file`]
    /// reads the state back).
    pub fn keras_file_compiled(
        &self,
        original: &[u8],
        optimizer: &Optimizer,
        loss: Loss,
    ) -> Result<Vec<u8>> {
        let compiled = Compiled {
            optimizer,
            losses: &Losses::same(loss, 1),
            weights: self.weights(),
        };
        keras_file(
            original,
            &|config| self.weights_tree(config),
            Some(compiled),
        )
    }

    fn weights_tree(&self, config: &Value) -> Result<Node> {
        let find = |name: &str| {
            self.layers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, l)| saved_of(l))
        };
        weights_tree(config, &find, self.layers.len())
    }
}
