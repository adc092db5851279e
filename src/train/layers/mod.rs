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
    "RepeatVector",
    "Flatten",
    "Reshape",
    "Permute",
    "Activation",
    "LayerNormalization",
    "BatchNormalization",
    "Conv1D",
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
mod tests {
    use super::{from_keras, TrainOp};
    use ndarray::{Array2, ArrayD, IxDyn};
    use serde_json::json;

    /// A xorshift stream in [-1, 1).
    fn stream(mut seed: u64) -> impl FnMut() -> f64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
    }

    /// `sum(op(x) · r)` against central differences of every input value and weight.
    fn check(op: &mut Box<dyn TrainOp<f64>>, x: ArrayD<f64>, mask: Option<Array2<bool>>) -> f64 {
        check_in(op, x, mask, false)
    }

    /// [`check`] in training mode or not.
    fn check_in(
        op: &mut Box<dyn TrainOp<f64>>,
        x: ArrayD<f64>,
        mask: Option<Array2<bool>>,
        training: bool,
    ) -> f64 {
        let mut next = stream(x.len() as u64 * 7919 + 1);
        let out = op
            .forward("l", x.view(), mask.as_ref(), training.then_some(1))
            .unwrap();
        let r = ArrayD::from_shape_fn(out.y.raw_dim(), |_| next());
        let (dx, dw) = op.backward("l", &out.cache, r.clone()).unwrap();
        assert_eq!(dx.shape(), x.shape());
        let loss = |op: &dyn TrainOp<f64>, x: &ArrayD<f64>| {
            let y = op
                .forward("l", x.view(), mask.as_ref(), training.then_some(1))
                .unwrap()
                .y;
            (&y * &r).sum()
        };
        let eps = 1e-6;
        let mut worst = 0.0f64;
        for e in 0..x.len() {
            let mut xp = x.clone();
            xp.as_slice_mut().unwrap()[e] += eps;
            let mut xm = x.clone();
            xm.as_slice_mut().unwrap()[e] -= eps;
            let fd = (loss(op.as_ref(), &xp) - loss(op.as_ref(), &xm)) / (2.0 * eps);
            worst = worst.max((fd - dx.as_slice().unwrap()[e]).abs());
        }
        let w0 = op.weights();
        assert_eq!(w0.len(), dw.len());
        for (k, w) in w0.iter().enumerate() {
            assert_eq!(w.shape(), dw[k].shape());
            for e in 0..w.len() {
                let at = |d: f64| {
                    let mut o = op.clone();
                    o.weights_mut()[k].as_slice_mut().unwrap()[e] += d;
                    loss(o.as_ref(), &x)
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                worst = worst.max((fd - dw[k].as_slice().unwrap()[e]).abs());
            }
        }
        worst
    }

    fn op(class: &str, cfg: serde_json::Value, w: Vec<ArrayD<f32>>) -> Box<dyn TrainOp<f64>> {
        from_keras::<f64>(class, &cfg, "l", w).unwrap().unwrap()
    }

    fn random(shape: &[usize], seed: u64) -> ArrayD<f64> {
        let mut next = stream(seed);
        ArrayD::from_shape_fn(IxDyn(shape), |_| next())
    }

    /// Every op's backward pass against central differences, over paddings, strides,
    /// dilations, window sizes, masks (a fully masked row included) and flags.
    #[test]
    fn ops_match_central_differences() {
        let mut worst = 0.0f64;
        let mut mask = Array2::from_elem((3, 7), true);
        mask[[0, 6]] = false;
        mask[[1, 0]] = false;
        mask[[1, 3]] = false;
        let x = random(&[3, 7, 4], 3);
        for (class, cfg) in [
            ("GlobalAveragePooling1D", json!({})),
            ("GlobalAveragePooling1D", json!({"keepdims": true})),
            ("GlobalMaxPooling1D", json!({})),
            ("MaxPooling1D", json!({"pool_size": 2})),
            (
                "MaxPooling1D",
                json!({"pool_size": 3, "strides": 2, "padding": "same"}),
            ),
            (
                "AveragePooling1D",
                json!({"pool_size": 3, "strides": 1, "padding": "same"}),
            ),
            ("AveragePooling1D", json!({"pool_size": 2, "strides": 3})),
            ("Flatten", json!({})),
            ("Reshape", json!({"target_shape": [2, -1]})),
            ("Permute", json!({"dims": [2, 1]})),
            ("Activation", json!({"activation": "softmax"})),
            ("Activation", json!({"activation": "tanh"})),
        ] {
            for m in [None, Some(mask.clone())] {
                let e = check(&mut op(class, cfg.clone(), vec![]), x.clone(), m);
                assert!(e < 1e-8, "{class} {cfg}: {e:e}");
                worst = worst.max(e);
            }
        }
        let e = check(
            &mut op("RepeatVector", json!({"n": 4}), vec![]),
            random(&[2, 5], 5),
            None,
        );
        worst = worst.max(e);
        for (cfg, k, cin, f) in [
            (json!({"padding": "valid", "kernel_size": 3}), 3, 4, 5),
            (
                json!({"padding": "same", "kernel_size": 4, "strides": 2}),
                4,
                4,
                2,
            ),
            (
                json!({"padding": "causal", "kernel_size": 2, "dilation_rate": 3}),
                2,
                4,
                3,
            ),
            (
                json!({"padding": "same", "kernel_size": 1, "use_bias": false, "activation": "relu"}),
                1,
                4,
                3,
            ),
        ] {
            let mut w = vec![random(&[k, cin, f], 11).mapv(|v| v as f32)];
            if cfg.get("use_bias") != Some(&json!(false)) {
                w.push(random(&[f], 13).mapv(|v| v as f32));
            }
            let e = check(&mut op("Conv1D", cfg.clone(), w), x.clone(), None);
            assert!(e < 1e-8, "Conv1D {cfg}: {e:e}");
            worst = worst.max(e);
        }
        for cfg in [
            json!({}),
            json!({"center": false, "epsilon": 0.1}),
            json!({"scale": false}),
        ] {
            let mut w = Vec::new();
            if cfg.get("scale") != Some(&json!(false)) {
                w.push(random(&[4], 17).mapv(|v| v as f32));
            }
            if cfg.get("center") != Some(&json!(false)) {
                w.push(random(&[4], 19).mapv(|v| v as f32));
            }
            let e = check(
                &mut op("LayerNormalization", cfg.clone(), w),
                x.clone(),
                Some(mask.clone()),
            );
            assert!(e < 1e-8, "LayerNormalization {cfg}: {e:e}");
            worst = worst.max(e);
        }
        // the noise layers in training mode (their draws fixed by the seed)
        for (class, cfg) in [
            ("GaussianNoise", json!({"stddev": 0.4})),
            ("GaussianDropout", json!({"rate": 0.3})),
            ("AlphaDropout", json!({"rate": 0.3})),
        ] {
            let e = check_in(
                &mut op(class, cfg, vec![]),
                x.clone(),
                Some(mask.clone()),
                true,
            );
            assert!(e < 1e-8, "{class}: {e:e}");
            worst = worst.max(e);
        }
        // BatchNormalization in both modes, masked (its masked moments) and not, 2-D and 3-D
        for cfg in [json!({}), json!({"center": false}), json!({"scale": false})] {
            let mut w = Vec::new();
            if cfg.get("scale") != Some(&json!(false)) {
                w.push(random(&[4], 37).mapv(|v| v as f32));
            }
            if cfg.get("center") != Some(&json!(false)) {
                w.push(random(&[4], 41).mapv(|v| v as f32));
            }
            w.push(random(&[4], 43).mapv(|v| v as f32));
            w.push(random(&[4], 47).mapv(|v| 1.0 + v.abs() as f32));
            for training in [false, true] {
                for (xx, m) in [
                    (x.clone(), None),
                    (x.clone(), Some(mask.clone())),
                    (random(&[5, 4], 53), None),
                ] {
                    let mut bn = op("BatchNormalization", cfg.clone(), w.clone());
                    let e = check_in(&mut bn, xx, m, training);
                    assert!(e < 1e-8, "BatchNormalization {cfg} {training}: {e:e}");
                    worst = worst.max(e);
                }
            }
        }
        println!("ops vs central differences: worst {worst:.1e}");
    }

    /// Masks as Keras passes them on: kept by LayerNormalization and Activation, dropped by
    /// the poolings, Conv1D, RepeatVector and Flatten; a fully masked row averages to NaN,
    /// as Keras's `0 / 0`; unknown options and classes are named.
    #[test]
    fn masks_options_and_errors() {
        let x = random(&[2, 5, 3], 23);
        let mut mask = Array2::from_elem((2, 5), true);
        mask.row_mut(1).fill(false);
        let keeps = |class: &str, cfg: serde_json::Value, w: Vec<ArrayD<f32>>| {
            op(class, cfg, w)
                .forward("l", x.view(), Some(&mask), None)
                .unwrap()
                .mask
                .is_some()
        };
        assert!(keeps("Activation", json!({"activation": "relu"}), vec![]));
        assert!(keeps(
            "LayerNormalization",
            json!({"center": false, "scale": false}),
            vec![]
        ));
        assert!(!keeps("MaxPooling1D", json!({}), vec![]));
        assert!(!keeps("Flatten", json!({}), vec![]));
        let avg = op("GlobalAveragePooling1D", json!({}), vec![])
            .forward("l", x.view(), Some(&mask), None)
            .unwrap()
            .y;
        let avg = avg.into_dimensionality::<ndarray::Ix2>().unwrap();
        assert!(avg.row(0).iter().all(|v| v.is_finite()));
        assert!(avg.row(1).iter().all(|v| v.is_nan()));
        for (class, cfg, key) in [
            ("Conv1D", json!({"kernel_size": 2, "groups": 3}), "groups"),
            (
                "MaxPooling1D",
                json!({"data_format": "channels_first"}),
                "data_format",
            ),
            (
                "LayerNormalization",
                json!({"rms_scaling": true}),
                "rms_scaling",
            ),
            (
                "Conv1D",
                json!({"kernel_size": 2, "padding": "full"}),
                "padding",
            ),
        ] {
            let e = from_keras::<f64>(class, &cfg, "conv", vec![]).unwrap_err();
            assert!(e.to_string().contains(key), "{class}: {e}");
        }
        let e =
            from_keras::<f64>("Conv1D", &json!({"kernel_size": 2}), "conv", vec![]).unwrap_err();
        assert!(e.to_string().contains("conv/kernel"), "{e}");
        assert!(from_keras::<f64>("Conv2D", &json!({}), "c", vec![])
            .unwrap()
            .is_none());
        let ln = op(
            "LayerNormalization",
            json!({"axis": 1}),
            vec![
                ndarray::ArrayD::ones(vec![3]),
                ndarray::ArrayD::zeros(vec![3]),
            ],
        );
        let Err(e) = ln.forward("ln", x.view(), None, None) else {
            panic!("axis 1 of a rank-3 input accepted");
        };
        assert!(e.to_string().contains("axis"), "{e}");
    }

    /// BatchNormalization's axis as Keras 2 writes it (`[2]` for a 3-D input) is the last
    /// axis; another is refused at the call, naming it.
    #[test]
    fn batch_norm_axis_forms() {
        let w = || {
            vec![
                ndarray::ArrayD::ones(vec![3]),
                ndarray::ArrayD::zeros(vec![3]),
                ndarray::ArrayD::zeros(vec![3]),
                ndarray::ArrayD::ones(vec![3]),
            ]
        };
        let x = random(&[2, 5, 3], 59);
        for axis in [json!(-1), json!([2]), json!(2)] {
            let bn = op("BatchNormalization", json!({"axis": axis}), w());
            assert!(bn.forward("bn", x.view(), None, Some(1)).is_ok(), "{axis}");
        }
        let bn = op("BatchNormalization", json!({"axis": 1}), w());
        let Err(e) = bn.forward("bn", x.view(), None, None) else {
            panic!("axis 1 of a rank-3 input accepted");
        };
        assert!(e.to_string().contains("axis"), "{e}");
    }

    /// Thousands of steps through every op (memory and index arithmetic at length).
    #[test]
    fn long_sequences() {
        let t = 3000;
        let x = random(&[2, t, 3], 29);
        let conv = op(
            "Conv1D",
            json!({"kernel_size": 5, "padding": "causal", "dilation_rate": 4}),
            vec![
                random(&[5, 3, 2], 31).mapv(|v| v as f32),
                ndarray::ArrayD::zeros(vec![2]),
            ],
        );
        let out = conv.forward("c", x.view(), None, None).unwrap();
        assert_eq!(out.y.shape(), &[2, t, 2]);
        let (dx, _) = conv.backward("c", &out.cache, out.y.clone()).unwrap();
        assert!(dx.iter().all(|v| v.is_finite()));
        for (class, cfg) in [
            ("MaxPooling1D", json!({"pool_size": 3, "padding": "same"})),
            ("GlobalAveragePooling1D", json!({})),
            ("GlobalMaxPooling1D", json!({})),
        ] {
            let p = op(class, cfg, vec![]);
            let out = p.forward("p", x.view(), None, None).unwrap();
            let (dx, _) = p.backward("p", &out.cache, out.y.clone()).unwrap();
            assert_eq!(dx.shape(), x.shape(), "{class}");
        }
    }

    /// `Σ_k sum(out_k · r_k)` over a merge's outputs against central differences of every
    /// input value and weight.
    fn check_merge(
        op: &dyn super::MergeOp<f64>,
        xs: &[ArrayD<f64>],
        masks: &[Option<Array2<bool>>],
    ) -> f64 {
        let mut next = stream(xs.iter().map(|x| x.len() as u64).sum::<u64>() * 31 + 5);
        let mref: Vec<Option<&Array2<bool>>> = masks.iter().map(Option::as_ref).collect();
        let run = |op: &dyn super::MergeOp<f64>, xs: &[ArrayD<f64>]| {
            let v: Vec<_> = xs.iter().map(|x| x.view()).collect();
            op.forward("m", &v, &mref).unwrap()
        };
        let out = run(op, xs);
        let r: Vec<ArrayD<f64>> = std::iter::once(&out.y)
            .chain(&out.extra)
            .map(|y| ArrayD::from_shape_fn(y.raw_dim(), |_| next()))
            .collect();
        let d_extra = r[1..].iter().cloned().map(Some).collect();
        let (dxs, dw) = op
            .backward_extra("m", &out.cache, r[0].clone(), d_extra)
            .unwrap();
        let loss = |op: &dyn super::MergeOp<f64>, xs: &[ArrayD<f64>]| {
            let o = run(op, xs);
            std::iter::once(&o.y)
                .chain(&o.extra)
                .zip(&r)
                .map(|(y, r)| (y * r).sum())
                .sum::<f64>()
        };
        let eps = 1e-6;
        let mut worst = 0.0f64;
        for (i, x) in xs.iter().enumerate() {
            let dx = dxs[i].clone().unwrap_or_else(|| ArrayD::zeros(x.raw_dim()));
            assert_eq!(dx.shape(), x.shape(), "{} input {i}", op.class());
            for e in 0..x.len() {
                let at = |d: f64| {
                    let mut v = xs.to_vec();
                    v[i].as_slice_mut().unwrap()[e] += d;
                    loss(op, &v)
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                worst = worst.max((fd - dx.as_slice().unwrap()[e]).abs());
            }
        }
        let w0 = op.weights();
        assert_eq!(w0.len(), dw.len(), "{}", op.class());
        for (k, w) in w0.iter().enumerate() {
            assert_eq!(w.shape(), dw[k].shape());
            for e in 0..w.len() {
                let at = |d: f64| {
                    let mut o = op.clone_box();
                    o.weights_mut()[k].as_slice_mut().unwrap()[e] += d;
                    loss(o.as_ref(), xs)
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                worst = worst.max((fd - dw[k].as_slice().unwrap()[e]).abs());
            }
        }
        worst
    }

    /// Every merge's and attention layer's backward pass (broadcasting shapes, masks with a
    /// fully masked row, causal masks, returned scores, every score mode) against central
    /// differences.
    #[test]
    fn merges_and_attention_match_central_differences() {
        use super::merge_from_keras;
        let merge = |class: &str, cfg: serde_json::Value, kw: serde_json::Value, w| {
            let kw = kw.as_object().cloned().unwrap_or_default();
            merge_from_keras::<f64>(class, &cfg, "m", &kw, w)
                .unwrap()
                .unwrap()
        };
        let mut worst = 0.0f64;
        // (each case past 1e-7, named)
        let mut past = Vec::new();
        let mut see = |what: String, e: f64| {
            if e >= 1e-7 {
                past.push(format!("{what}: {e:.1e}"));
            }
            worst = worst.max(e);
        };
        // (seeds far apart in their bits: a xorshift stream from a small seed starts near
        // -1 for a few draws, and near-ties between Maximum's operands would be within eps)
        let seed = |k: u64| 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(k + 1);
        let (a, b, c) = (
            random(&[3, 5, 4], seed(11)),
            random(&[3, 5, 4], seed(12)),
            random(&[3, 5, 4], seed(13)),
        );
        let narrow = random(&[3, 1, 4], seed(14));
        for class in [
            "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
        ] {
            let m = merge(class, json!({}), json!({}), vec![]);
            let three = if class == "Subtract" {
                vec![a.clone(), b.clone()]
            } else {
                vec![a.clone(), b.clone(), c.clone()]
            };
            let n = three.len();
            see(
                class.into(),
                check_merge(m.as_ref(), &three, &vec![None; n]),
            );
            // (a [B, 1, C] input broadcast along time)
            let e = check_merge(m.as_ref(), &[a.clone(), narrow.clone()], &[None, None]);
            see(format!("{class} broadcast"), e);
        }
        for axis in [-1, 1, 2] {
            let m = merge("Concatenate", json!({ "axis": axis }), json!({}), vec![]);
            let other = if axis == 1 {
                random(&[3, 2, 4], seed(15))
            } else {
                random(&[3, 5, 3], seed(15))
            };
            let e = check_merge(m.as_ref(), &[a.clone(), other], &[None, None]);
            see(format!("Concatenate axis {axis}"), e);
        }
        for axis in [1, -1] {
            let m = merge("ExpandDims", json!({ "axis": axis }), json!({}), vec![]);
            see(
                format!("ExpandDims axis {axis}"),
                check_merge(m.as_ref(), std::slice::from_ref(&a), &[None]),
            );
        }
        // Dot: Luong scores ([2, 2]), their context ([2, 1]), rank 2, rank 4, normalized
        let scores = random(&[3, 5, 6], seed(18));
        let seq6 = random(&[3, 6, 4], seed(19));
        for (axes, x, y) in [
            (json!([2, 2]), a.clone(), seq6.clone()),
            (json!([2, 1]), scores.clone(), seq6.clone()),
            (json!(-1), a.clone(), b.clone()),
            (
                json!(1),
                random(&[3, 4], seed(20)),
                random(&[3, 4], seed(21)),
            ),
            (
                json!([1, 3]),
                random(&[3, 4, 2, 3], seed(22)),
                random(&[3, 2, 5, 4], seed(23)),
            ),
        ] {
            for (normalize, keras2) in [(false, false), (true, false), (true, true)] {
                let m = merge(
                    "Dot",
                    json!({"axes": axes, "normalize": normalize, "keras2_normalize": keras2}),
                    json!({}),
                    vec![],
                );
                see(
                    format!("Dot axes {axes} normalize {normalize} keras2 {keras2}"),
                    check_merge(m.as_ref(), &[x.clone(), y.clone()], &[None, None]),
                );
            }
        }
        // attention: query [3, 5, 4], value [3, 6, 4], key [3, 6, 4]
        let (q, v, k) = (
            a.clone(),
            random(&[3, 6, 4], seed(16)),
            random(&[3, 6, 4], seed(17)),
        );
        let mut qm = Array2::from_elem((3, 5), true);
        qm[[0, 4]] = false;
        qm[[2, 0]] = false;
        let mut vm = Array2::from_elem((3, 6), true);
        vm[[0, 5]] = false;
        vm[[1, 1]] = false;
        // (no query that sees only masked values, causal masks included: Keras subtracts
        // 1e9 from each of its scores, and the rounding of `s - 1e9` (ulp 1.2e-7) is a step
        // central differences see)
        vm.slice_mut(ndarray::s![2, 3..]).fill(false);
        let scalar = |v: f32| ndarray::arr0(v).into_dyn();
        for (class, cfg, weights) in [
            ("Attention", json!({}), vec![]),
            ("Attention", json!({"use_scale": true}), vec![scalar(0.7)]),
            (
                "Attention",
                json!({"use_scale": true, "score_mode": "concat"}),
                vec![scalar(0.7), scalar(1.3)],
            ),
            ("AdditiveAttention", json!({"use_scale": false}), vec![]),
            (
                "AdditiveAttention",
                json!({}),
                vec![ndarray::arr1(&[0.5f32, -1.0, 0.25, 2.0]).into_dyn()],
            ),
        ] {
            for kw in [
                json!({}),
                json!({"return_attention_scores": true}),
                json!({"use_causal_mask": true}),
                json!({"use_causal_mask": true, "return_attention_scores": true}),
            ] {
                for masks in [
                    [None, None],
                    [Some(qm.clone()), None],
                    [None, Some(vm.clone())],
                    [Some(qm.clone()), Some(vm.clone())],
                ] {
                    let m = merge(class, cfg.clone(), kw.clone(), weights.clone());
                    for xs in [
                        vec![q.clone(), v.clone()],
                        vec![q.clone(), v.clone(), k.clone()],
                    ] {
                        let e = check_merge(m.as_ref(), &xs, &masks);
                        let which = (masks[0].is_some(), masks[1].is_some(), xs.len());
                        see(format!("{class} {cfg} {kw} (masks, inputs) {which:?}"), e);
                    }
                }
            }
        }
        // MultiHeadAttention: 2 heads, key_dim 3, value_dim 2, output 5; with and without
        // biases, both of Keras's paths (scores returned or not), causal, every mask of
        // query and value (a query row masked: a fully masked row of scores), two inputs
        // and three
        let mha_weights = |bias: bool, at: u64| {
            let mut w = Vec::new();
            for (k, (kernel, b)) in [
                (vec![4, 2, 3], vec![2, 3]),
                (vec![4, 2, 3], vec![2, 3]),
                (vec![4, 2, 2], vec![2, 2]),
                (vec![2, 2, 5], vec![5]),
            ]
            .into_iter()
            .enumerate()
            {
                w.push(random(&kernel, seed(at + 2 * k as u64)).mapv(|v| v as f32));
                if bias {
                    w.push(random(&b, seed(at + 2 * k as u64 + 1)).mapv(|v| v as f32));
                }
            }
            w
        };
        for bias in [true, false] {
            let cfg = json!({"num_heads": 2, "key_dim": 3, "value_dim": 2, "use_bias": bias});
            for kw in [
                json!({}),
                json!({"return_attention_scores": true}),
                json!({"use_causal_mask": true}),
                json!({"use_causal_mask": true, "return_attention_scores": true}),
            ] {
                for masks in [
                    [None, None],
                    [Some(qm.clone()), None],
                    [None, Some(vm.clone())],
                    [Some(qm.clone()), Some(vm.clone())],
                ] {
                    let m = merge(
                        "MultiHeadAttention",
                        cfg.clone(),
                        kw.clone(),
                        mha_weights(bias, 40),
                    );
                    for xs in [
                        vec![q.clone(), v.clone()],
                        vec![q.clone(), v.clone(), k.clone()],
                    ] {
                        let e = check_merge(m.as_ref(), &xs, &masks);
                        let which = (masks[0].is_some(), masks[1].is_some(), xs.len());
                        see(format!("MultiHeadAttention bias {bias} {kw} {which:?}"), e);
                    }
                }
            }
        }
        assert!(past.is_empty(), "{}", past.join("; "));
        println!("merges and attention vs central differences: worst {worst:.1e}");
    }
}
