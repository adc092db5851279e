//! A trainable chain from a loaded model ([`Sequential::from_model`]: its layers' configs
//! and weights in `T`, models with training-time randomness refused) and its weights in
//! Keras's `get_weights()` order and shapes.

use super::{Sequential, TrainLayer};
use crate::config::LstmConfig;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::model::{KerasModel, ModelLayer};
use crate::network::Network;
use crate::weights::LstmWeights;
use ndarray::{Array1, Array2, ArrayD, IxDyn};

impl<T: Element> Sequential<T> {
    /// The chain of `model` (a `Sequential` or functional chain of Masking, LSTM and Dense
    /// layers, [`KerasModel::layers`]) with its weights in `T`.
    pub fn from_model(model: &KerasModel) -> Result<Self> {
        refuse_untrained_wrappers(model.config())?;
        if let Some(why) = model.chain_error() {
            return Err(LstmError::invalid(
                "model",
                format!("not trainable yet: {why}"),
            ));
        }
        refuse_training_randomness(model.config())?;
        refuse_regularizers(model.config())?;
        let mut dropouts = dropout_layers(model.config(), model.layers())?;
        let mut layers = dropouts.remove(&0).unwrap_or_default();
        for (k, (name, layer)) in model.layers().iter().enumerate() {
            let l = train_layer(model.config(), name, layer)?;
            layers.push((name.clone(), l));
            layers.extend(dropouts.remove(&(k + 1)).unwrap_or_default());
        }
        Ok(Sequential {
            layers,
            carried: Default::default(),
        })
    }

    /// Every trainable weight in Keras's `trainable_weights` order (its `get_weights()` order
    /// for a model without non-trainable variables; BatchNormalization's moving statistics
    /// are in [`Sequential::state`]).
    pub fn weights(&self) -> Vec<ArrayD<T>> {
        self.layers.iter().flat_map(|(_, l)| l.weights()).collect()
    }

    /// Every weight as a view into the layers, in [`Sequential::weights`]'s order and shapes
    /// (what an optimizer step updates in place).
    pub fn weights_mut(&mut self) -> Vec<ndarray::ArrayViewMutD<'_, T>> {
        self.layers
            .iter_mut()
            .flat_map(|(_, l)| l.weights_mut())
            .collect()
    }

    /// The non-trainable variables in Keras's `non_trainable_weights` order
    /// (BatchNormalization's moving mean and variance), which `fit` updates from each
    /// training-mode batch.
    pub fn state(&self) -> Vec<ArrayD<T>> {
        self.layers.iter().flat_map(|(_, l)| l.state()).collect()
    }

    /// Replaces the non-trainable variables (the order and shapes of
    /// [`Sequential::state`]).
    pub fn set_state(&mut self, new: &[ArrayD<T>]) -> Result<()> {
        set_states(self.layers.iter_mut().map(|(_, l)| l), new)
    }

    /// Replaces every weight (the order and shapes of [`Sequential::weights`]).
    pub fn set_weights(&mut self, new: &[ArrayD<T>]) -> Result<()> {
        assign_weights(self.weights_mut(), new)
    }
}

/// Assigns `new` to the views `old` (the same count and shapes, or an error saying which).
pub(super) fn assign_weights<T: Element>(
    old: Vec<ndarray::ArrayViewMutD<'_, T>>,
    new: &[ArrayD<T>],
) -> Result<()> {
    super::check_shapes(
        "weights",
        &old.iter().map(|w| w.shape()).collect::<Vec<_>>(),
        &new.iter().map(|w| w.shape()).collect::<Vec<_>>(),
    )?;
    for (mut w, n) in old.into_iter().zip(new) {
        w.assign(n);
    }
    Ok(())
}

/// Gives `layers` their non-trainable variables `new` (in order: each layer's
/// [`TrainLayer::state`]).
pub(super) fn set_states<'a, T: Element + 'a>(
    layers: impl Iterator<Item = &'a mut TrainLayer<T>>,
    new: &[ArrayD<T>],
) -> Result<()> {
    let layers: Vec<&mut TrainLayer<T>> = layers.collect();
    let old: Vec<ArrayD<T>> = layers.iter().flat_map(|l| l.state()).collect();
    super::check_shapes(
        "state",
        &old.iter().map(|w| w.shape()).collect::<Vec<_>>(),
        &new.iter().map(|w| w.shape()).collect::<Vec<_>>(),
    )?;
    let mut at = 0;
    for l in layers {
        if let TrainLayer::Op(op) = l {
            let k = op.state().len();
            op.set_state(&new[at..at + k])?;
            at += k;
        }
    }
    Ok(())
}

impl<T: Element> TrainLayer<T> {
    /// The layer's trainable weights in Keras's order and shapes.
    pub fn weights(&self) -> Vec<ArrayD<T>> {
        let mut out = Vec::new();
        match self {
            TrainLayer::Masking { .. } | TrainLayer::Dropout { .. } => {}
            TrainLayer::Embedding { table, .. } => out.push(table.clone().into_dyn()),
            TrainLayer::Op(op) => out.extend(op.weights()),
            TrainLayer::Recurrent { weights, .. } => push_weights(&mut out, weights),
            TrainLayer::Bidirectional {
                forward, backward, ..
            } => {
                push_weights(&mut out, &forward.1);
                push_weights(&mut out, &backward.1);
            }
            TrainLayer::Dense { kernel, bias, .. } => {
                out.push(kernel.clone().into_dyn());
                out.extend(bias.clone().map(|b| b.into_dyn()));
            }
        }
        out
    }

    /// [`TrainLayer::weights`] as views into the layer.
    pub fn weights_mut(&mut self) -> Vec<ndarray::ArrayViewMutD<'_, T>> {
        fn direction<'a, T>(
            out: &mut Vec<ndarray::ArrayViewMutD<'a, T>>,
            w: &'a mut LstmWeights<T>,
        ) {
            let n = w.kernel.ncols();
            out.push(w.kernel.view_mut().into_dyn());
            out.push(w.recurrent_kernel.view_mut().into_dyn());
            if let Some(b) = w.bias.as_mut() {
                let shape = if b.len() == 2 * n {
                    vec![2, n]
                } else {
                    vec![b.len()]
                };
                out.push(
                    b.view_mut()
                        .into_shape_with_order(IxDyn(&shape))
                        .expect("a contiguous bias"),
                );
            }
        }
        let mut out = Vec::new();
        match self {
            TrainLayer::Masking { .. } | TrainLayer::Dropout { .. } => {}
            TrainLayer::Embedding { table, .. } => out.push(table.view_mut().into_dyn()),
            TrainLayer::Op(op) => out.extend(op.weights_mut()),
            TrainLayer::Recurrent { weights, .. } => direction(&mut out, weights),
            TrainLayer::Bidirectional {
                forward, backward, ..
            } => {
                direction(&mut out, &mut forward.1);
                direction(&mut out, &mut backward.1);
            }
            TrainLayer::Dense { kernel, bias, .. } => {
                out.push(kernel.view_mut().into_dyn());
                out.extend(bias.as_mut().map(|b| b.view_mut().into_dyn()));
            }
        }
        out
    }

    /// The layer's non-trainable variables (BatchNormalization's moving mean and variance).
    pub fn state(&self) -> Vec<ArrayD<T>> {
        match self {
            TrainLayer::Op(op) => op.state(),
            _ => Vec::new(),
        }
    }
}

/// The trainable layer of `layer` (named `name` in the model config `config`), its weights
/// in `T`.
pub(super) fn train_layer<T: Element>(
    model_config: &serde_json::Value,
    name: &str,
    layer: &ModelLayer,
) -> Result<TrainLayer<T>> {
    Ok(match layer {
        ModelLayer::Embedding { table, mask_zero } => TrainLayer::Embedding {
            table: table.mapv(|v| T::from_f64(f64::from(v))),
            mask_zero: *mask_zero,
        },
        ModelLayer::Masking { mask_value } => TrainLayer::Masking {
            mask_value: T::from_f64(f64::from(*mask_value)),
        },
        ModelLayer::Recurrent(Network::Lstm(l)) => {
            let (config, weights) = direction(l, name, false)?;
            let (dropout, recurrent_dropout) = dropout_rates(model_config, name)?;
            TrainLayer::Recurrent {
                config,
                weights,
                dropout,
                recurrent_dropout,
            }
        }
        ModelLayer::Recurrent(Network::Bidirectional(bi)) => {
            if bi.merge_mode() == crate::config::MergeMode::None
                || bi.forward_layer().config().return_state
            {
                return Err(LstmError::unsupported(
                    "layer",
                    format!(
                        "{name} (a Bidirectional layer with two outputs or its states) in training"
                    ),
                ));
            }
            let (dropout, recurrent_dropout) = dropout_rates(model_config, name)?;
            TrainLayer::Bidirectional {
                forward: direction(bi.forward_layer(), name, true)?,
                backward: direction(bi.backward_layer(), name, true)?,
                merge: bi.merge_mode(),
                dropout,
                recurrent_dropout,
            }
        }
        ModelLayer::Recurrent(_) => {
            return Err(LstmError::unsupported(
                "layer",
                format!("{name} (a stack inside one layer) in training"),
            ))
        }
        ModelLayer::Other {
            class,
            config,
            weights,
        } => match super::layers::from_keras::<T>(class, config, name, weights.clone())? {
            Some(op) => TrainLayer::Op(op),
            None => {
                return Err(LstmError::unsupported(
                    "layer",
                    format!("{name} ({class}) in training"),
                ))
            }
        },
        ModelLayer::Dense {
            kernel,
            bias,
            activation,
        } => TrainLayer::Dense {
            kernel: kernel.mapv(|v| T::from_f64(f64::from(v))),
            bias: bias.as_ref().map(|b| b.mapv(|v| T::from_f64(f64::from(v)))),
            activation: *activation,
            time_distributed: class_of(model_config, name) == Some("TimeDistributed"),
        },
    })
}

/// The Keras class of layer `name` in the model config `config`.
fn class_of<'a>(config: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    config
        .pointer("/config/layers")?
        .as_array()?
        .iter()
        .find(|e| {
            e.pointer("/config/name")
                .and_then(serde_json::Value::as_str)
                == Some(name)
        })?
        .get("class_name")?
        .as_str()
}

/// Keras's `fit` adds a layer's regularization losses to the loss (`kernel_regularizer`,
/// `recurrent_regularizer`, `bias_regularizer`, `activity_regularizer`, the
/// `ActivityRegularization` layer's `l1`/`l2`), applies its constraints after each step
/// (`*_constraint`) and leaves a frozen layer (`trainable: false`) as it is; the chain
/// ([`super::Sequential`]) builds none of these, and training without them would train another
/// model, so a config with any set is refused, naming the layer and the key and
/// [`super::Functional`], which trains them.
pub(super) fn refuse_regularizers(config: &serde_json::Value) -> Result<()> {
    use serde_json::Value;
    fn walk(v: &Value) -> Result<()> {
        match v {
            Value::Object(o) => {
                if let Some(cfg) = o.get("config").and_then(Value::as_object) {
                    let name = cfg.get("name").and_then(Value::as_str).unwrap_or("?");
                    for (key, value) in cfg {
                        let set = (key.ends_with("_regularizer") || key.ends_with("_constraint"))
                            && !value.is_null();
                        let activity = o.get("class_name").and_then(Value::as_str)
                            == Some("ActivityRegularization")
                            && (key == "l1" || key == "l2")
                            && value.as_f64().is_some_and(|r| r != 0.0);
                        let frozen = key == "trainable" && value == &Value::Bool(false);
                        if set || activity || frozen {
                            return Err(LstmError::unsupported(
                                key.as_str(),
                                format!(
                                    "{value} on layer {name} in training (regularizers, \
                                     constraints and frozen layers are trained by \
                                     train::Functional, not by the chain; train this model \
                                     with Functional)"
                                ),
                            ));
                        }
                    }
                }
                o.values().try_for_each(walk)
            }
            Value::Array(a) => a.iter().try_for_each(walk),
            _ => Ok(()),
        }
    }
    walk(config)
}

/// A `Bidirectional` around a ConvLSTM (run at inference, not trained yet) is refused
/// naming the layer.
pub(super) fn refuse_untrained_wrappers(config: &serde_json::Value) -> Result<()> {
    let layers = config
        .pointer("/config/layers")
        .and_then(serde_json::Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for l in layers {
        let class = |v: &serde_json::Value| {
            v.get("class_name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let inner = l.pointer("/config/layer").map(class).unwrap_or_default();
        if class(l) == "Bidirectional" && inner.starts_with("ConvLSTM") {
            let name = l
                .pointer("/config/name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?");
            return Err(LstmError::unsupported(
                "Bidirectional",
                format!("around {inner} (layer {name}) in training"),
            ));
        }
    }
    Ok(())
}

/// Keras applies dropout and noise in `fit`; training without them would train another
/// model, so a config with any (a Dropout-family layer with a rate, a recurrent layer's
/// `dropout` or `recurrent_dropout`) is refused, naming the layer and the key.
pub(super) fn refuse_training_randomness(config: &serde_json::Value) -> Result<()> {
    fn walk(v: &serde_json::Value) -> Result<()> {
        match v {
            // a Dropout or SpatialDropout1D layer is trained (TrainLayer::Dropout), and so are
            // GaussianNoise, GaussianDropout and AlphaDropout (TrainLayer::Op)
            serde_json::Value::Object(o)
                if matches!(
                    o.get("class_name").and_then(serde_json::Value::as_str),
                    Some(
                        "Dropout"
                            | "SpatialDropout1D"
                            | "GaussianNoise"
                            | "GaussianDropout"
                            | "AlphaDropout"
                    )
                ) =>
            {
                Ok(())
            }
            // so are a recurrent layer's dropout and recurrent_dropout, and the attention
            // layers' dropout (layers::attention, layers::mha)
            serde_json::Value::Object(o)
                if matches!(
                    o.get("class_name").and_then(serde_json::Value::as_str),
                    Some(
                        "LSTM"
                            | "GRU"
                            | "SimpleRNN"
                            | "Attention"
                            | "AdditiveAttention"
                            | "MultiHeadAttention"
                    )
                ) =>
            {
                Ok(())
            }
            serde_json::Value::Object(o) => {
                let name = o
                    .get("config")
                    .and_then(|c| c.get("name"))
                    .and_then(serde_json::Value::as_str);
                if let (Some(cfg), Some(name)) = (o.get("config"), name) {
                    for key in ["rate", "dropout", "recurrent_dropout", "stddev"] {
                        if let Some(r) = cfg.get(key).and_then(serde_json::Value::as_f64) {
                            if r > 0.0 {
                                return Err(LstmError::unsupported(
                                    key,
                                    format!(
                                        "{r} on layer {name} in training (dropout and noise in training mode are not built; set it to 0 to train this model)"
                                    ),
                                ));
                            }
                        }
                    }
                }
                o.values().try_for_each(walk)
            }
            serde_json::Value::Array(a) => a.iter().try_for_each(walk),
            _ => Ok(()),
        }
    }
    walk(config)
}

/// The `Dropout`, `SpatialDropout1D`, `GaussianNoise`, `GaussianDropout` and `AlphaDropout` layers of the model's
/// layer list (the identity at inference, outside the chain view), by where they sit in the
/// chain: key `k`
/// holds those after the chain's first `k` layers (`layers`), in order.
#[allow(clippy::type_complexity)]
fn dropout_layers<T: Element>(
    config: &serde_json::Value,
    layers: &[(String, ModelLayer)],
) -> Result<std::collections::HashMap<usize, Vec<(String, TrainLayer<T>)>>> {
    use serde_json::Value;
    let mut out: std::collections::HashMap<usize, Vec<(String, TrainLayer<T>)>> =
        Default::default();
    let list = config
        .get("config")
        .and_then(|c| c.get("layers"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut seen = 0;
    for entry in list {
        let cfg = &entry["config"];
        let name = cfg.get("name").and_then(Value::as_str).unwrap_or("");
        if seen < layers.len() && layers[seen].0 == name {
            seen += 1;
            continue;
        }
        let class = entry
            .get("class_name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(l) = identity_layer(class, cfg, name)? {
            out.entry(seen).or_default().push((name.to_string(), l));
        }
    }
    if seen != layers.len() {
        return Err(LstmError::bad_config(
            "config.layers",
            "the layer list does not hold the chain's layers in order",
        ));
    }
    Ok(out)
}

/// The trainable layer of a layer that is the identity at inference (`Dropout`,
/// `SpatialDropout1D`, `GaussianNoise`, `GaussianDropout`, `AlphaDropout`,
/// `ActivityRegularization`) from its config, or None for another class.
pub(super) fn identity_layer<T: Element>(
    class: &str,
    cfg: &serde_json::Value,
    name: &str,
) -> Result<Option<TrainLayer<T>>> {
    use serde_json::Value;
    if let c @ ("GaussianNoise" | "GaussianDropout" | "AlphaDropout") = class {
        let op = super::layers::from_keras::<T>(c, cfg, name, Vec::new())?
            .expect("a class of layers::CLASSES");
        return Ok(Some(TrainLayer::Op(op)));
    }
    // (its l1 and l2 are refused by refuse_regularizers; without them it is the identity)
    if class == "ActivityRegularization" {
        return Ok(Some(TrainLayer::Dropout {
            rate: 0.0,
            noise_shape: None,
        }));
    }
    if !matches!(class, "Dropout" | "SpatialDropout1D") {
        return Ok(None);
    }
    let rate = super::unit_rate(cfg, "rate", name)?;
    // SpatialDropout1D: one draw per (row, channel), kept at every step (Keras's
    // `noise_shape = (batch, 1, channels)`)
    let noise_shape = match cfg.get("noise_shape") {
        _ if class == "SpatialDropout1D" => Some(vec![None, Some(1), None]),
        None | Some(Value::Null) => None,
        Some(Value::Array(dims)) => Some(
            dims.iter()
                .map(|d| match d {
                    Value::Null => Ok(None),
                    d => d.as_u64().map(|v| Some(v as usize)).ok_or_else(|| {
                        LstmError::bad_config(
                            format!("noise_shape of layer {name}"),
                            format!("{d} is not a dimension"),
                        )
                    }),
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(other) => {
            return Err(LstmError::bad_config(
                format!("noise_shape of layer {name}"),
                format!("{other} is not a shape"),
            ))
        }
    };
    Ok(Some(TrainLayer::Dropout { rate, noise_shape }))
}

/// The `dropout` and `recurrent_dropout` of the recurrent layer `name` in the model's layer
/// list (inside a Bidirectional, its wrapped layer's), each in `[0, 1)`.
fn dropout_rates(config: &serde_json::Value, name: &str) -> Result<(f64, f64)> {
    use serde_json::Value;
    let list = config
        .get("config")
        .and_then(|c| c.get("layers"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let Some(entry) = list
        .iter()
        .find(|e| e["config"].get("name").and_then(Value::as_str) == Some(name))
    else {
        return Ok((0.0, 0.0));
    };
    let cfg = match entry.get("class_name").and_then(Value::as_str) {
        Some("Bidirectional") => &entry["config"]["layer"]["config"],
        _ => &entry["config"],
    };
    Ok((
        super::unit_rate(cfg, "dropout", name)?,
        super::unit_rate(cfg, "recurrent_dropout", name)?,
    ))
}

/// One recurrent direction of a loaded layer, its weights in `T` (a stateful one refused
/// inside a `Bidirectional`, whose states are not carried).
fn direction<T: Element>(
    l: &crate::cpu::Lstm<f32>,
    name: &str,
    in_bidirectional: bool,
) -> Result<(LstmConfig, LstmWeights<T>)> {
    let cfg = l.config().clone();
    if cfg.stateful && in_bidirectional {
        return Err(LstmError::unsupported(
            "stateful",
            format!("true on the Bidirectional layer {name} in training"),
        ));
    }
    let w = l.weights();
    let k = |a: &Array2<f32>| a.mapv(|v| T::from_f64(f64::from(v)));
    let weights = LstmWeights::new(
        &cfg,
        w.kernel.nrows(),
        k(&w.kernel),
        k(&w.recurrent_kernel),
        w.bias
            .as_ref()
            .map(|b| b.mapv(|v| T::from_f64(f64::from(v)))),
    )?;
    Ok((cfg, weights))
}

/// A direction's weights in Keras's order and shapes.
fn push_weights<T: Element>(out: &mut Vec<ArrayD<T>>, w: &LstmWeights<T>) {
    out.push(w.kernel.clone().into_dyn());
    out.push(w.recurrent_kernel.clone().into_dyn());
    out.extend(w.bias.clone().map(|b| keras_bias(b, w.kernel.ncols())));
}

/// A recurrent bias in Keras's shape: `[G·H]`, or `[2, G·H]` for a GRU with reset_after
/// (the input bias, then the recurrent one).
pub(super) fn keras_bias<T: Element>(b: Array1<T>, n: usize) -> ArrayD<T> {
    if b.len() == 2 * n {
        b.into_shape_with_order(IxDyn(&[2, n])).expect("two halves")
    } else {
        b.into_dyn()
    }
}
