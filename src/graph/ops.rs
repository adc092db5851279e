//! The layers of a model graph on the CPU, each with its Keras inference semantics and its
//! `compute_mask` rule: what a layer does with the `[B, T]` mask of its inputs.

use super::activations::{Activate, Leaky, PRelu};
use super::combine::{AnyOp, Dot, GlobalPool, Merge, Norm, NotEqual};
use super::core::{Dense, Embedding, Identity, Masking, Permute, Recurrent, RepeatVector, Reshape};
use super::Value;
use crate::activation::Activation;
use crate::config::LayerConfig;
use crate::custom::CustomObjects;
use crate::error::{LstmError, Result};
pub(super) use crate::gpu::plan::GpuStage;
pub(super) use crate::gpu::Uploader;
use crate::network::Network;
use crate::weight_source::WeightSource;
use ndarray::{Array1, Array2, ArrayD, Axis, Ix2};
use serde_json::Value as Json;

/// What a node passes to its layer besides the positional inputs.
pub(crate) struct Extra<'a> {
    /// `initial_state` tensors (recurrent layers).
    pub states: Vec<&'a Value>,
    /// An explicit `mask=` tensor (bool values as 0/1), overriding the inputs' masks.
    pub mask: Option<&'a Value>,
    /// Scalar positional arguments (`NotEqual(x, 0.0)`).
    pub scalars: &'a [f64],
    /// The call's other keyword arguments (`use_causal_mask`, `return_attention_scores`).
    pub kwargs: &'a serde_json::Map<String, Json>,
}

impl Extra<'_> {
    /// A boolean keyword argument (false when absent).
    pub fn flag(&self, key: &str) -> bool {
        self.kwargs
            .get(key)
            .and_then(Json::as_bool)
            .unwrap_or(false)
    }
}

/// A boxed copy of an op (a model is `Clone`).
pub(crate) trait OpClone {
    fn clone_box(&self) -> Box<dyn Op>;
}

impl<T: Op + Clone + 'static> OpClone for T {
    fn clone_box(&self) -> Box<dyn Op> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn Op> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// One layer of a graph on the CPU.
pub(crate) trait Op: OpClone + std::fmt::Debug + Send {
    /// Runs the layer on `inputs`, returning its outputs with their masks.
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>>;

    /// The layer's parameters (weight values), as Keras's `count_params`.
    fn params(&self) -> usize {
        0
    }

    /// Whether the GPU path has a kernel for it (the application's custom layers have none).
    fn on_gpu(&self) -> bool {
        true
    }

    /// Whether this is a recurrent layer (it takes `initial_state`).
    fn is_recurrent(&self) -> bool {
        false
    }

    /// The layer's GPU twin: its stage with the weights uploaded by `up` (the stage's
    /// builder and kernel compute what `call` does, step for step).
    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>>;
}

/// `s` boxed as a stage.
pub(super) fn stage(s: impl GpuStage + 'static) -> Result<Box<dyn GpuStage>> {
    Ok(Box::new(s))
}

/// The layer classes that are the identity at inference (and `InputLayer`).
pub(crate) const IDENTITY_AT_INFERENCE: &[&str] = &[
    "InputLayer",
    "Dropout",
    "SpatialDropout1D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
];

/// The layer classes a graph runs (and `InputLayer`).
pub(crate) const SUPPORTED: &[&str] = &[
    "InputLayer",
    "LSTM",
    "GRU",
    "SimpleRNN",
    "RNN",
    "Bidirectional",
    "Dense",
    "Embedding",
    "Masking",
    "TimeDistributed",
    "RepeatVector",
    "Flatten",
    "Reshape",
    "Permute",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Softmax",
    "Concatenate",
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Maximum",
    "Minimum",
    "LayerNormalization",
    "BatchNormalization",
    "Normalization",
    "GlobalAveragePooling1D",
    "GlobalMaxPooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Dropout",
    "SpatialDropout1D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "NotEqual",
    "Any",
    "LogicalOr",
    "LogicalAnd",
    "ConvertToTensor",
    "ExpandDims",
    "ZerosLike",
    "OnesLike",
    "Dot",
    "PReLU",
    "Conv1D",
    "Conv2D",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "MaxPooling1D",
    "AveragePooling1D",
    "MaxPooling2D",
    "AveragePooling2D",
    "ZeroPadding2D",
    "Cropping2D",
    "UpSampling2D",
    "ZeroPadding1D",
    "Cropping1D",
    "UpSampling1D",
    "Attention",
    "AdditiveAttention",
    "MultiHeadAttention",
];

fn f64_of(cfg: &Json, key: &str, default: f64) -> f64 {
    cfg.get(key).and_then(Json::as_f64).unwrap_or(default)
}

fn int_of(cfg: &Json, key: &str, default: i64) -> i64 {
    cfg.get(key).and_then(Json::as_i64).unwrap_or(default)
}

pub(super) fn one_input<'a>(inputs: &[&'a Value], name: &str) -> Result<&'a Value> {
    match inputs {
        [x] => Ok(x),
        other => Err(LstmError::invalid(
            format!("layer {name}"),
            format!("takes one input, got {}", other.len()),
        )),
    }
}

/// A layer's activation: element-wise, or softmax over the last axis (the model's
/// `DenseActivation`).
pub(super) use crate::model::DenseActivation as Act;

/// The activation of a Keras config value (`"relu"`, `null` = linear, an activation object,
/// or softmax).
/// A normalization layer's `axis` as Keras writes it: an int, or a list of one (Keras 2's
/// `[2]`); `-1` when absent; None when it is neither.
pub(crate) fn norm_axis(cfg: &Json) -> Option<i64> {
    match cfg.get("axis") {
        None | Some(Json::Null) => Some(-1),
        Some(Json::Array(a)) if a.len() == 1 => a[0].as_i64(),
        Some(v) => v.as_i64(),
    }
}

pub(crate) fn act_of(v: Option<&Json>, what: &str) -> Result<Act> {
    let name = match v {
        None | Some(Json::Null) => return Ok(Act::Elementwise(Activation::Linear)),
        Some(Json::String(s)) => s.clone(),
        Some(Json::Object(o)) => o
            .get("config")
            .and_then(Json::as_str)
            .or_else(|| o.get("class_name").and_then(Json::as_str))
            .unwrap_or("?")
            .to_string(),
        Some(other) => return Err(LstmError::unsupported(what, other)),
    };
    if name == "softmax" {
        return Ok(Act::Softmax);
    }
    Activation::from_name(&name)
        .map(Act::Elementwise)
        .map_err(|_| LstmError::unsupported(what, name))
}

pub(super) fn apply_act(a: Act, x: &mut ArrayD<f32>) {
    match a {
        Act::Elementwise(Activation::Linear) => {}
        Act::Elementwise(f) => x.mapv_inplace(|v| f.apply(v)),
        Act::Softmax => {
            let last = x.ndim() - 1;
            for mut row in x.lanes_mut(Axis(last)) {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                row.mapv_inplace(|v| (v - m).exp());
                let s: f32 = row.sum();
                row.mapv_inplace(|v| v / s);
            }
        }
    }
}

/// `mask` when it is `[b, t]` (the tensor's batch and time axes), else an error naming the
/// layer: a mask that does not fit its tensor is never indexed.
pub(super) fn fitting_mask<'m>(
    mask: Option<&'m Array2<bool>>,
    (b, t): (usize, usize),
    name: &str,
) -> Result<Option<&'m Array2<bool>>> {
    match mask {
        Some(m) if m.dim() != (b, t) => Err(LstmError::shape(
            format!("mask reaching layer {name}"),
            &[b, t],
            m.shape(),
        )),
        other => Ok(other),
    }
}

/// The mask of a `[B, T]` tensor of 0/1 values.
pub(super) fn bool_mask(v: &Value, name: &str) -> Result<Array2<bool>> {
    v.data
        .mapv(|x| x != 0.0)
        .into_dimensionality::<Ix2>()
        .map_err(|_| LstmError::shape(format!("mask of layer {name}"), &[0, 0], v.data.shape()))
}

/// Builds the layer `class` named `name` (weight group `key`) from its config.
pub(crate) fn build(
    class: &str,
    cfg: &Json,
    entry: &Json,
    name: &str,
    key: &str,
    src: &WeightSource,
    custom: &CustomObjects,
) -> Result<Box<dyn Op>> {
    let weights = || src.layer(key, name);
    if let Some(op) = super::conv::build(class, cfg, name, &weights)? {
        return Ok(op);
    }
    if IDENTITY_AT_INFERENCE.contains(&class) {
        return Ok(Box::new(Identity));
    }
    Ok(match class {
        "Bidirectional"
            if matches!(
                cfg["layer"]["class_name"].as_str(),
                Some("ConvLSTM1D" | "ConvLSTM2D")
            ) =>
        {
            Box::new(super::conv_lstm::build_bidirectional(
                cfg,
                name,
                weights()?,
            )?)
        }
        "LSTM" | "GRU" | "SimpleRNN" | "Bidirectional" => {
            let config = LayerConfig::from_keras(entry)?;
            let net = Network::from_keras_weights(&config, &weights()?)?;
            Box::new(Recurrent {
                name: name.to_string(),
                net,
                keras2_call_mask: cfg
                    .get("keras2_call_mask")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
                // (CuDNNLSTM/CuDNNGRU itself, or inside a Bidirectional)
                cudnn_class: [cfg, &cfg["layer"]["config"]]
                    .iter()
                    .find_map(|c| c.get("cudnn_class").and_then(Json::as_str))
                    .map(str::to_string),
            })
        }
        "RNN" => super::rnn::build(
            entry,
            name,
            key,
            src,
            cfg.get("keras2_call_mask")
                .and_then(Json::as_bool)
                .unwrap_or(false),
        )?,
        "Dense" => Box::new(Dense::new(cfg, name, weights()?)?),
        "ConvLSTM1D" | "ConvLSTM2D" => {
            Box::new(super::conv_lstm::build(class, cfg, name, weights()?)?)
        }
        "MultiHeadAttention" => super::mha::build(cfg, name, key, src)?,
        "Normalization" => Box::new(super::preprocessing::Normalize::new(cfg, name, weights()?)?),
        "TimeDistributed" => {
            let inner = cfg
                .get("layer")
                .ok_or_else(|| LstmError::bad_config("layer", "TimeDistributed without a layer"))?;
            let class = inner
                .get("class_name")
                .and_then(Json::as_str)
                .unwrap_or("?");
            let icfg = inner.get("config").unwrap_or(&Json::Null);
            match class {
                // A per-timestep layer on [B, T, ...] is the layer on the last axis.
                "Dense" => Box::new(Dense::new(icfg, name, weights()?)?),
                "Activation" | "Dropout" => build(class, icfg, inner, name, key, src, custom)?,
                "TimeDistributed" | "Sequential" | "Functional" | "Model" => {
                    return Err(LstmError::unsupported(
                        "TimeDistributed layer",
                        format!("{class} (layer {name:?}; a plain layer is supported)"),
                    ))
                }
                // Any other layer: on the batch x timesteps rows (the weights are the
                // TimeDistributed layer's, under its key).
                _ => Box::new(super::core::TimeDistributed {
                    name: name.to_string(),
                    inner: build(class, icfg, inner, name, key, src, custom)?,
                }),
            }
        }
        "Embedding" => {
            let w = weights()?;
            let table = w
                .into_iter()
                .next()
                .ok_or_else(|| LstmError::MissingWeight {
                    name: format!("{name}/embeddings"),
                })?
                .into_dimensionality::<Ix2>()
                .map_err(|_| LstmError::shape(format!("{name}/embeddings"), &[0, 0], &[]))?;
            Box::new(Embedding {
                name: name.to_string(),
                table,
                mask_zero: cfg
                    .get("mask_zero")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
            })
        }
        "Masking" => Box::new(Masking {
            value: f64_of(cfg, "mask_value", 0.0) as f32,
        }),
        "RepeatVector" => Box::new(RepeatVector {
            n: int_of(cfg, "n", 1).max(0) as usize,
        }),
        "Flatten" => Box::new(Reshape { target: None }),
        "Reshape" => Box::new(Reshape {
            target: Some(
                cfg.get("target_shape")
                    .and_then(Json::as_array)
                    .ok_or_else(|| LstmError::bad_config("target_shape", "expected a list"))?
                    .iter()
                    .map(|d| d.as_i64().unwrap_or(-1))
                    .collect(),
            ),
        }),
        "Permute" => Box::new(Permute {
            dims: cfg
                .get("dims")
                .and_then(Json::as_array)
                .ok_or_else(|| LstmError::bad_config("dims", "expected a list"))?
                .iter()
                .map(|d| d.as_u64().unwrap_or(0) as usize)
                .collect(),
        }),
        "Activation" => Box::new(Activate(act_of(cfg.get("activation"), "activation")?)),
        "ReLU" => {
            let (max, slope, threshold) = (
                cfg.get("max_value").and_then(Json::as_f64),
                f64_of(cfg, "negative_slope", 0.0),
                f64_of(cfg, "threshold", 0.0),
            );
            if max.is_none() && slope == 0.0 && threshold == 0.0 {
                Box::new(Activate(Act::Elementwise(Activation::Relu)))
            } else {
                Box::new(Leaky {
                    slope: slope as f32,
                    threshold: threshold as f32,
                    max: max.map(|m| m as f32),
                })
            }
        }
        "LeakyReLU" => Box::new(Leaky {
            slope: f64_of(
                cfg,
                "negative_slope",
                cfg.get("alpha").and_then(Json::as_f64).unwrap_or(0.3),
            ) as f32,
            threshold: 0.0,
            max: None,
        }),
        "ELU" => {
            let alpha = f64_of(cfg, "alpha", 1.0);
            if alpha != 1.0 {
                return Err(LstmError::unsupported("ELU alpha", alpha));
            }
            Box::new(Activate(Act::Elementwise(Activation::Elu)))
        }
        "Softmax" => {
            let axis = cfg.get("axis").and_then(Json::as_i64).unwrap_or(-1);
            if axis != -1 {
                return Err(LstmError::unsupported("Softmax axis", axis));
            }
            Box::new(Activate(Act::Softmax))
        }
        "Concatenate" | "Add" | "Subtract" | "Multiply" | "Average" | "Maximum" | "Minimum" => {
            Box::new(Merge {
                name: name.to_string(),
                class: class.to_string(),
                axis: int_of(cfg, "axis", -1),
            })
        }
        "LayerNormalization" => {
            let axis = norm_axis(cfg).unwrap_or(-1);
            if axis != -1 {
                return Err(LstmError::unsupported("LayerNormalization axis", axis));
            }
            let (center, scale) = (
                cfg.get("center").and_then(Json::as_bool).unwrap_or(true),
                cfg.get("scale").and_then(Json::as_bool).unwrap_or(true),
            );
            let mut w = weights()?.into_iter();
            let gamma = if scale { w.next() } else { None };
            let beta = if center { w.next() } else { None };
            Box::new(Norm {
                name: name.to_string(),
                eps: f64_of(cfg, "epsilon", 1e-3) as f32,
                layer: true,
                gamma: gamma.map(|a| a.iter().copied().collect()),
                beta: beta.map(|a| a.iter().copied().collect()),
                mean: None,
                var: None,
                axis,
            })
        }
        "BatchNormalization" => {
            let axis = norm_axis(cfg).unwrap_or(-1);
            let (center, scale) = (
                cfg.get("center").and_then(Json::as_bool).unwrap_or(true),
                cfg.get("scale").and_then(Json::as_bool).unwrap_or(true),
            );
            let mut w = weights()?.into_iter();
            let vec = |a: Option<ArrayD<f32>>, what: &str| -> Result<Array1<f32>> {
                a.map(|a| a.iter().copied().collect())
                    .ok_or_else(|| LstmError::MissingWeight {
                        name: format!("{name}/{what}"),
                    })
            };
            let gamma = if scale {
                Some(vec(w.next(), "gamma")?)
            } else {
                None
            };
            let beta = if center {
                Some(vec(w.next(), "beta")?)
            } else {
                None
            };
            let mean = vec(w.next(), "moving_mean")?;
            let var = vec(w.next(), "moving_variance")?;
            Box::new(Norm {
                name: name.to_string(),
                eps: f64_of(cfg, "epsilon", 1e-3) as f32,
                layer: false,
                gamma,
                beta,
                mean: Some(mean),
                var: Some(var),
                axis,
            })
        }
        "GlobalAveragePooling1D"
        | "GlobalMaxPooling1D"
        | "GlobalAveragePooling2D"
        | "GlobalMaxPooling2D" => {
            if cfg.get("data_format").and_then(Json::as_str) == Some("channels_first") {
                return Err(LstmError::unsupported("data_format", "channels_first"));
            }
            Box::new(GlobalPool {
                average: class.starts_with("GlobalAverage"),
                spatial: class.ends_with("2D"),
                keepdims: cfg.get("keepdims").and_then(Json::as_bool).unwrap_or(false),
            })
        }
        "NotEqual" => Box::new(NotEqual),
        "Dot" => {
            let axes = match cfg.get("axes") {
                Some(Json::Array(a)) if a.len() == 2 => {
                    (a[0].as_i64().unwrap_or(-1), a[1].as_i64().unwrap_or(-1))
                }
                Some(v) => {
                    let a = v.as_i64().unwrap_or(-1);
                    (a, a)
                }
                None => return Err(LstmError::bad_config("axes", "Dot without axes")),
            };
            Box::new(Dot {
                name: name.to_string(),
                axes,
                normalize: cfg
                    .get("normalize")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
                keras2_normalize: cfg
                    .get("keras2_normalize")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
            })
        }
        "PReLU" => Box::new(PRelu {
            name: name.to_string(),
            alpha: weights()?
                .into_iter()
                .next()
                .ok_or_else(|| LstmError::MissingWeight {
                    name: format!("{name}/alpha"),
                })?,
        }),
        // An op layer Keras saves between a mask and the layer taking it: a conversion to a
        // tensor of the same dtype (a dtype change is not read).
        "ConvertToTensor" => match cfg.get("dtype") {
            None | Some(Json::Null) => Box::new(Identity),
            Some(other) => {
                return Err(LstmError::unsupported(
                    "ConvertToTensor dtype",
                    format!("{other} (layer {name:?}; a conversion without dtype is supported)"),
                ))
            }
        },
        "LogicalOr" | "LogicalAnd" => Box::new(Merge {
            name: name.to_string(),
            class: class.to_string(),
            axis: -1,
        }),
        "ExpandDims" => Box::new(super::core::ExpandDims {
            axis: int_of(cfg, "axis", -1),
        }),
        "ZerosLike" | "OnesLike" => Box::new(super::core::FillLike {
            value: if class == "OnesLike" { 1.0 } else { 0.0 },
        }),
        "Any" => Box::new(AnyOp {
            axis: int_of(cfg, "axis", -1),
            keepdims: cfg.get("keepdims").and_then(Json::as_bool).unwrap_or(false),
        }),
        other => {
            if let Some(built) = custom.build(entry, name, weights()?) {
                let (class, layer) = built?;
                return Ok(Box::new(super::custom::Custom {
                    name: name.to_string(),
                    class,
                    layer: std::sync::Arc::new(std::sync::Mutex::new(layer)),
                }));
            }
            return Err(LstmError::unsupported(
                "layer class_name",
                format!(
                    "{other} (layer {name:?}; supported: {}; an application's own class is \
                     registered with lstm_wgpu::custom::CustomObjects)",
                    SUPPORTED.join(", ")
                ),
            ));
        }
    })
}
