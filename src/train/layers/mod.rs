//! Trainable layers around the recurrent ones: each a [`TrainOp`] (its forward pass keeping
//! what its backward pass needs, its backward pass, its weights in Keras's order) in its own
//! file, built from its Keras config and weights by [`from_keras`]. A chain holds them as
//! [`super::TrainLayer::Op`]; adding one touches only this module.
//!
//! - `pooling.rs`: `GlobalAveragePooling1D` (over the unmasked steps), `GlobalMaxPooling1D`,
//!   `MaxPooling1D`, `AveragePooling1D`.
//! - `shape.rs`: `RepeatVector`, `Flatten`, `Reshape`, `Permute`, `Activation`.
//! - `norm.rs`: `LayerNormalization`; `batch_norm.rs`: `BatchNormalization` (batch
//!   statistics in training mode, the moving ones updated by `fit`).
//! - `conv.rs`: `Conv1D`.
//! - `conv_lstm.rs`: `ConvLSTM1D`, `ConvLSTM2D`.
//! - `noise.rs`: `GaussianNoise`, `GaussianDropout`, `AlphaDropout` (training mode; the
//!   identity otherwise).
//!
//! A functional graph ([`super::Functional`]) also trains layers of several inputs, each a
//! [`MergeOp`] built by [`merge_from_keras`]:
//!
//! - `merge.rs`: `Add`, `Subtract`, `Multiply`, `Average`, `Maximum`, `Minimum`,
//!   `Concatenate`, and the op layers Keras saves for masks (`NotEqual`, `Any`,
//!   `LogicalAnd`, `LogicalOr`, `ExpandDims`, `ZerosLike`, `OnesLike`).
//! - `attention.rs`: `Attention`, `AdditiveAttention`; `mha.rs`: `MultiHeadAttention`.

mod attention;
mod batch_norm;
mod conv;
mod conv_lstm;
mod dot;
mod merge;
mod mha;
mod noise;
mod norm;
mod pooling;
mod scale_shift;
mod shape;

use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array2, ArrayD, ArrayViewD, ArrayViewMutD};
use serde_json::Value;
use std::any::Any;

/// What a [`TrainOp`]'s forward pass keeps for its backward pass.
pub type OpCache = Box<dyn Any + Send + Sync>;

/// The forward pass of a [`TrainOp`]: its output, the output's Keras mask (`[B, T]`) and
/// what the backward pass needs.
pub struct OpForward<T> {
    /// The output.
    pub y: ArrayD<T>,
    /// The output's mask, as Keras's `compute_mask` gives it.
    pub mask: Option<Array2<bool>>,
    /// For [`TrainOp::backward`].
    pub cache: OpCache,
}

/// A trainable layer of a [`super::Sequential`] chain beyond its built-in variants: one
/// input, one output, Keras's semantics.
///
/// ```
/// use lstm_wgpu::train::layers::{from_keras, TrainOp};
/// let op = from_keras::<f64>("RepeatVector", &serde_json::json!({"n": 3}), "rep", vec![])
///     .unwrap()
///     .unwrap();
/// let x = ndarray::Array2::<f64>::ones((2, 4)).into_dyn();
/// let out = op.forward("rep", x.view(), None, None).unwrap();
/// assert_eq!(out.y.shape(), &[2, 3, 4]);
/// let (dx, grads) = op.backward("rep", &out.cache, ndarray::ArrayD::ones(vec![2, 3, 4])).unwrap();
/// assert_eq!(dx, ndarray::ArrayD::from_elem(vec![2, 4], 3.0));
/// assert!(grads.is_empty());
/// ```
pub trait TrainOp<T>: std::fmt::Debug + Send + Sync {
    /// The Keras class.
    fn class(&self) -> &'static str;

    /// The output on `x` under the incoming mask `mask` (`[B, T]`), with its mask and the
    /// cache of the backward pass; in training mode (`fit`, `gradients_in_training`)
    /// `training` holds this layer's seed for this step (for its random draws), None at
    /// inference; `name` is the layer's, for errors.
    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        mask: Option<&Array2<bool>>,
        training: Option<u64>,
    ) -> Result<OpForward<T>>;

    /// From the output's cotangent `d`: the input's and each weight's (the order of
    /// [`TrainOp::weights`]).
    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)>;

    /// The pre-activation of a sigmoid or softmax output (Keras's cached `_keras_logits`,
    /// from which its cross-entropies are computed), from the forward's cache; None by
    /// default.
    fn logits(&self, _cache: &OpCache) -> Option<ArrayD<T>> {
        None
    }

    /// The activation between [`TrainOp::logits`] and the output (a sigmoid or softmax),
    /// None for an op that gives no logits.
    fn logits_activation(&self) -> Option<crate::model::DenseActivation> {
        None
    }

    /// The backward pass from the cotangent of the logits [`TrainOp::logits`] gave (the loss
    /// took them, as Keras's cross-entropies do): past the activation. An op that gives
    /// logits implements it; the default is an error.
    fn backward_from_logits(
        &self,
        name: &str,
        _cache: &OpCache,
        _d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        Err(LstmError::invalid(
            format!("layer {name}"),
            "gives no logits to take a cotangent of",
        ))
    }

    /// The trainable weights in Keras's order and shapes (none by default).
    fn weights(&self) -> Vec<ArrayD<T>> {
        Vec::new()
    }

    /// The same weights as views (what an optimizer step updates in place).
    fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        Vec::new()
    }

    /// The non-trainable variables in Keras's order (`non_trainable_weights`, saved after the
    /// trainable ones: BatchNormalization's moving statistics); none by default.
    fn state(&self) -> Vec<ArrayD<T>> {
        Vec::new()
    }

    /// The state's new values after a training-mode forward that left `cache`, from `state`
    /// (the values before that call: a layer called twice in a step composes its two
    /// updates, as Keras assigns them in each call; `fit` writes the result after its step);
    /// None by default.
    fn state_update(&self, _state: &[ArrayD<T>], _cache: &OpCache) -> Option<Vec<ArrayD<T>>> {
        None
    }

    /// Writes the state (the shapes of [`TrainOp::state`]).
    fn set_state(&mut self, state: &[ArrayD<T>]) -> Result<()> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(LstmError::invalid(
                self.class(),
                format!("has no state; got {} arrays", state.len()),
            ))
        }
    }

    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn TrainOp<T>>;
}

impl<T> Clone for Box<dyn TrainOp<T>> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// What a [`MergeOp`]'s forward pass gives: its output, the output's Keras mask, its
/// further outputs (an attention layer's scores with `return_attention_scores`; no mask)
/// and what its backward pass needs.
pub struct MergeForward<T> {
    /// The output.
    pub y: ArrayD<T>,
    /// Its mask `[B, T]`, if any.
    pub mask: Option<Array2<bool>>,
    /// Outputs 1, 2, ... of the layer.
    pub extra: Vec<ArrayD<T>>,
    /// What the backward pass reads.
    pub cache: OpCache,
}

/// A trainable layer of several inputs in a functional graph: a merge, an attention layer,
/// an op layer. Its forward pass takes the inputs with their masks; its backward pass gives
/// each input's cotangent (None for an input it has no gradient for, as a comparison's) and
/// its weights' gradients in Keras's order.
pub trait MergeOp<T>: std::fmt::Debug + Send + Sync {
    /// The Keras class.
    fn class(&self) -> &'static str;

    /// The forward pass on `xs` with their masks.
    fn forward(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
    ) -> Result<MergeForward<T>>;

    /// [`forward`](Self::forward) with the call's scalar arguments (`x != 0.0`'s `0.0`).
    fn forward_with_scalars(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
        _scalars: &[f64],
    ) -> Result<MergeForward<T>> {
        self.forward(name, xs, masks)
    }

    /// [`forward_with_scalars`](Self::forward_with_scalars) in training mode: `seed` is the
    /// call's own random stream (None in inference mode), for the ops that draw masks
    /// (attention dropout); the others ignore it.
    fn forward_in_training(
        &self,
        name: &str,
        xs: &[ArrayViewD<'_, T>],
        masks: &[Option<&Array2<bool>>],
        scalars: &[f64],
        seed: Option<u64>,
    ) -> Result<MergeForward<T>> {
        let _ = seed;
        self.forward_with_scalars(name, xs, masks, scalars)
    }

    /// The cotangents of the inputs and the weights' gradients for the cotangent `d` of the
    /// output.
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>)>;

    /// [`backward`](Self::backward) with the cotangents of the further outputs too (None
    /// where none reached one).
    #[allow(clippy::type_complexity)]
    fn backward_extra(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
        d_extra: Vec<Option<ArrayD<T>>>,
    ) -> Result<(Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>)> {
        if d_extra.iter().any(Option::is_some) {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                "has one output; a cotangent reached another",
            ));
        }
        self.backward(name, cache, d)
    }

    /// The trainable weights in Keras's order.
    fn weights(&self) -> Vec<ArrayD<T>> {
        Vec::new()
    }

    /// The same as views (what an optimizer updates).
    fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        Vec::new()
    }

    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn MergeOp<T>>;
}

impl<T> Clone for Box<dyn MergeOp<T>> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// The classes [`merge_from_keras`] builds.
pub const MERGE_CLASSES: &[&str] = &[
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Maximum",
    "Minimum",
    "Concatenate",
    "NotEqual",
    "Any",
    "LogicalAnd",
    "LogicalOr",
    "ExpandDims",
    "ZerosLike",
    "OnesLike",
    "ConvertToTensor",
    "Attention",
    "AdditiveAttention",
    "Dot",
    "MultiHeadAttention",
];

/// The layer of several inputs of Keras class `class` with config `cfg`, the call's keyword
/// arguments `kwargs` (`use_causal_mask`, `return_attention_scores`) and its weights
/// (`get_weights()` order) in `T`, or None for a class not in [`MERGE_CLASSES`].
///
/// ```
/// use lstm_wgpu::train::layers::merge_from_keras;
/// let add = merge_from_keras::<f64>("Add", &serde_json::json!({}), "add", &Default::default(), vec![])
///     .unwrap()
///     .unwrap();
/// let (a, b) = (ndarray::arr2(&[[1.0, 2.0]]).into_dyn(), ndarray::arr2(&[[3.0, 5.0]]).into_dyn());
/// let out = add.forward("add", &[a.view(), b.view()], &[None, None]).unwrap();
/// assert_eq!(out.y, ndarray::arr2(&[[4.0, 7.0]]).into_dyn());
/// ```
pub fn merge_from_keras<T: Element>(
    class: &str,
    cfg: &Value,
    name: &str,
    kwargs: &serde_json::Map<String, Value>,
    weights: Vec<ArrayD<f32>>,
) -> Result<Option<Box<dyn MergeOp<T>>>> {
    let w: Vec<ArrayD<T>> = weights
        .into_iter()
        .map(|a| a.mapv(|v| T::from_f64(f64::from(v))))
        .collect();
    let int = |key: &str, default: i64| cfg.get(key).and_then(Value::as_i64).unwrap_or(default);
    Ok(Some(match class {
        "Concatenate" => Box::new(merge::Concatenate {
            axis: int("axis", -1),
        }),
        "NotEqual" => Box::new(merge::Compare::NotEqual),
        "Any" => Box::new(merge::Compare::Any {
            axis: int("axis", -1),
            keepdims: cfg
                .get("keepdims")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }),
        "LogicalAnd" => Box::new(merge::Compare::And),
        "LogicalOr" => Box::new(merge::Compare::Or),
        "ExpandDims" => Box::new(merge::OpLayer::ExpandDims(int("axis", -1))),
        "ZerosLike" => Box::new(merge::OpLayer::Fill(0.0)),
        "OnesLike" => Box::new(merge::OpLayer::Fill(1.0)),
        // (between a mask and the layer taking it; a dtype change is not read)
        "ConvertToTensor" => match cfg.get("dtype") {
            None | Some(Value::Null) => Box::new(merge::OpLayer::Identity),
            Some(other) => {
                return Err(LstmError::unsupported(
                    "ConvertToTensor dtype",
                    format!("{other} (layer {name:?}; a conversion without dtype is supported)"),
                ))
            }
        },
        "Dot" => {
            let axis = |v: &Value| {
                v.as_i64().ok_or_else(|| {
                    LstmError::bad_config(
                        format!("axes of layer {name}"),
                        format!("{v} is not an axis"),
                    )
                })
            };
            let axes = match cfg.get("axes") {
                Some(Value::Array(a)) if a.len() == 2 => (axis(&a[0])?, axis(&a[1])?),
                Some(v) if !v.is_array() => (axis(v)?, axis(v)?),
                other => {
                    return Err(LstmError::bad_config(
                        format!("axes of layer {name}"),
                        format!("{other:?} is not an axis or a pair of axes"),
                    ))
                }
            };
            let flag = |key: &str| cfg.get(key).and_then(Value::as_bool).unwrap_or(false);
            Box::new(dot::Dot {
                axes,
                normalize: flag("normalize"),
                keras2_normalize: flag("keras2_normalize"),
            })
        }
        "Attention" | "AdditiveAttention" => {
            Box::new(attention::Attention::new(class, cfg, name, kwargs, w)?)
        }
        "MultiHeadAttention" => Box::new(mha::Mha::new(cfg, name, kwargs, w)?),
        other => match merge::Merge::new(other) {
            Some(m) => Box::new(m),
            None => return Ok(None),
        },
    }))
}

/// The Keras classes [`from_keras`] builds (single-input layers of a chain).
pub const CLASSES: &[&str] = &[
    "GlobalAveragePooling1D",
    "GlobalMaxPooling1D",
    "MaxPooling1D",
    "AveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "MaxPooling2D",
    "AveragePooling2D",
    "RepeatVector",
    "Flatten",
    "Reshape",
    "Permute",
    "Activation",
    "LayerNormalization",
    "BatchNormalization",
    "Conv1D",
    "Conv2D",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
];

/// The trainable layer of Keras class `class` with config `cfg` (the layer's `config`
/// object), weights `weights` (`get_weights()` order, as in the weights file) and name
/// `name`, in `T`; None for a class not in [`CLASSES`]. An option this crate does not train
/// (`channels_first`, `rms_scaling`, `groups`, ...) is an error naming it.
pub fn from_keras<T: Element>(
    class: &str,
    cfg: &Value,
    name: &str,
    weights: Vec<ArrayD<f32>>,
) -> Result<Option<Box<dyn TrainOp<T>>>> {
    let w: Vec<ArrayD<T>> = weights
        .into_iter()
        .map(|a| a.mapv(|v| T::from_f64(f64::from(v))))
        .collect();
    let op: Box<dyn TrainOp<T>> = match class {
        "GlobalAveragePooling1D" | "GlobalMaxPooling1D" => {
            crate::graph::channels_last(cfg)?;
            Box::new(pooling::GlobalPool1D {
                average: class == "GlobalAveragePooling1D",
                keepdims: cfg
                    .get("keepdims")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        }
        "GlobalAveragePooling2D" | "GlobalMaxPooling2D" => {
            crate::graph::channels_last(cfg)?;
            Box::new(pooling::GlobalPool2D {
                average: class == "GlobalAveragePooling2D",
                keepdims: cfg
                    .get("keepdims")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        }
        "MaxPooling2D" | "AveragePooling2D" => {
            crate::graph::channels_last(cfg)?;
            Box::new(pooling::Pool2D::new(
                class == "MaxPooling2D",
                crate::graph::Window2::from_config(cfg, 2, "pool_size", true)?,
            ))
        }
        "MaxPooling1D" | "AveragePooling1D" => {
            crate::graph::channels_last(cfg)?;
            Box::new(pooling::Pool1D::new(
                class == "MaxPooling1D",
                crate::graph::Window2::from_config(cfg, 1, "pool_size", true)?,
            ))
        }
        "RepeatVector" => Box::new(shape::RepeatVector {
            n: cfg
                .get("n")
                .and_then(Value::as_u64)
                .ok_or_else(|| LstmError::bad_config(format!("n of layer {name}"), "missing"))?
                as usize,
        }),
        "Flatten" => {
            crate::graph::channels_last(cfg)?;
            Box::new(shape::Flatten { target: None })
        }
        "Reshape" => {
            let target: Vec<i64> = cfg
                .get("target_shape")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    LstmError::bad_config(
                        format!("target_shape of layer {name}"),
                        "expected a list",
                    )
                })?
                .iter()
                .map(|d| d.as_i64().unwrap_or(-1))
                .collect();
            if target.iter().filter(|&&d| d <= 0).count() > 1 {
                return Err(LstmError::bad_config(
                    format!("target_shape of layer {name}"),
                    format!("{target:?} has more than one inferred axis"),
                ));
            }
            Box::new(shape::Flatten {
                target: Some(target),
            })
        }
        "Permute" => {
            let dims: Vec<usize> = cfg
                .get("dims")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    LstmError::bad_config(format!("dims of layer {name}"), "expected a list")
                })?
                .iter()
                .map(|d| d.as_u64().unwrap_or(0) as usize)
                .collect();
            let mut sorted = dims.clone();
            sorted.sort_unstable();
            if sorted != (1..=dims.len()).collect::<Vec<_>>() {
                return Err(LstmError::bad_config(
                    format!("dims of layer {name}"),
                    format!("{dims:?} is not a permutation of 1..={}", dims.len()),
                ));
            }
            Box::new(shape::Permute {
                axes: std::iter::once(0).chain(dims).collect(),
            })
        }
        "Activation" => Box::new(shape::ActivationOp {
            activation: crate::graph::act_of(cfg.get("activation"), "activation")?,
        }),
        "LayerNormalization" => Box::new(norm::LayerNorm::new(cfg, name, w)?),
        "BatchNormalization" => Box::new(batch_norm::BatchNorm::new(cfg, name, w)?),
        "AlphaDropout" => {
            let rate = super::unit_rate(cfg, "rate", name)?;
            if !cfg.get("noise_shape").is_none_or(Value::is_null) {
                return Err(LstmError::unsupported(
                    "noise_shape",
                    format!("{} on layer {name} in training", cfg["noise_shape"]),
                ));
            }
            Box::new(noise::AlphaDropout { rate })
        }
        "GaussianNoise" | "GaussianDropout" => {
            let key = if class == "GaussianNoise" {
                "stddev"
            } else {
                "rate"
            };
            let v = if class == "GaussianNoise" {
                let v = cfg.get(key).and_then(Value::as_f64).unwrap_or(0.0);
                if !(v >= 0.0 && v.is_finite()) {
                    return Err(LstmError::bad_config(
                        format!("{key} of layer {name}"),
                        format!("{v} is not a finite stddev >= 0"),
                    ));
                }
                v
            } else {
                super::unit_rate(cfg, key, name)?
            };
            Box::new(noise::GaussianNoise {
                stddev: if class == "GaussianNoise" {
                    v
                } else {
                    (v / (1.0 - v)).sqrt()
                },
                multiply: class == "GaussianDropout",
                class: if class == "GaussianNoise" {
                    "GaussianNoise"
                } else {
                    "GaussianDropout"
                },
            })
        }
        "Conv1D" => {
            crate::graph::channels_last(cfg)?;
            Box::new(conv::Conv1D::new(cfg, name, w)?)
        }
        "Conv2D" => {
            crate::graph::channels_last(cfg)?;
            Box::new(conv::Conv2D::new(cfg, name, w)?)
        }
        "ConvLSTM1D" | "ConvLSTM2D" => Box::new(conv_lstm::ConvLstm::new(class, cfg, name, w)?),
        _ => return Ok(None),
    };
    Ok(Some(op))
}

/// The cache of `op` as its own type (a cache from another layer is an error).
fn cache_of<'a, C: 'static>(cache: &'a OpCache, name: &str) -> Result<&'a C> {
    cache
        .downcast_ref::<C>()
        .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "cache mismatch"))
}

#[cfg(test)]
mod image_tests;
#[cfg(test)]
mod tests;
