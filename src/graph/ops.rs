//! The layers of a model graph on the CPU, each with its Keras inference semantics and its
//! `compute_mask` rule: what a layer does with the `[B, T]` mask of its inputs.

use super::Value;
use crate::activation::Activation;
use crate::config::LayerConfig;
use crate::cpu::reference::matmul;
use crate::error::{LstmError, Result};
use crate::network::Network;
use crate::weight_source::WeightSource;
use ndarray::{s, Array1, Array2, ArrayD, Axis, Ix2, Ix3, IxDyn};
use serde_json::Value as Json;

/// What a node passes to its layer besides the positional inputs.
pub(crate) struct Extra<'a> {
    /// `initial_state` tensors (recurrent layers).
    pub states: Vec<&'a Value>,
    /// An explicit `mask=` tensor (bool values as 0/1), overriding the inputs' masks.
    pub mask: Option<&'a Value>,
    /// Scalar positional arguments (`NotEqual(x, 0.0)`).
    pub scalars: Vec<f64>,
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
}

/// The layer classes a graph runs (and `InputLayer`).
pub(crate) const SUPPORTED: &[&str] = &[
    "InputLayer",
    "LSTM",
    "GRU",
    "SimpleRNN",
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
    "GlobalAveragePooling1D",
    "GlobalMaxPooling1D",
    "Dropout",
    "SpatialDropout1D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "NotEqual",
    "Any",
    "Conv1D",
    "MaxPooling1D",
    "AveragePooling1D",
    "ZeroPadding1D",
    "Cropping1D",
    "UpSampling1D",
    "Attention",
    "AdditiveAttention",
];

fn f64_of(cfg: &Json, key: &str, default: f64) -> f64 {
    cfg.get(key).and_then(Json::as_f64).unwrap_or(default)
}

fn int_of(cfg: &Json, key: &str, default: i64) -> i64 {
    cfg.get(key).and_then(Json::as_i64).unwrap_or(default)
}

fn one_input<'a>(inputs: &[&'a Value], name: &str) -> Result<&'a Value> {
    match inputs {
        [x] => Ok(x),
        other => Err(LstmError::invalid(
            format!("layer {name}"),
            format!("takes one input, got {}", other.len()),
        )),
    }
}

/// The activation of a Keras config value (`"relu"`, `null` = linear, or softmax).
#[derive(Debug, Clone, Copy)]
enum Act {
    Elementwise(Activation),
    Softmax,
}

fn act_of(v: Option<&Json>, what: &str) -> Result<Act> {
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

fn apply_act(a: Act, x: &mut ArrayD<f32>) {
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

/// The mask of a `[B, T]` tensor of 0/1 values.
fn bool_mask(v: &Value, name: &str) -> Result<Array2<bool>> {
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
) -> Result<Box<dyn Op>> {
    let weights = || src.layer(key, name);
    if let Some(op) = super::conv::build(class, cfg, name, &weights)? {
        return Ok(op);
    }
    Ok(match class {
        "InputLayer"
        | "Dropout"
        | "SpatialDropout1D"
        | "GaussianNoise"
        | "GaussianDropout"
        | "AlphaDropout"
        | "ActivityRegularization" => Box::new(Identity),
        "LSTM" | "GRU" | "SimpleRNN" | "Bidirectional" => {
            let config = LayerConfig::from_keras(entry)?;
            let net = Network::from_keras_weights(&config, &weights()?)?;
            Box::new(Recurrent {
                name: name.to_string(),
                net,
            })
        }
        "Dense" => Box::new(Dense::new(cfg, name, weights()?)?),
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
                "Activation" | "Dropout" => build(class, icfg, inner, name, key, src)?,
                other => {
                    return Err(LstmError::unsupported(
                        "TimeDistributed layer",
                        format!("{other} (layer {name:?}; Dense and Activation are supported)"),
                    ))
                }
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
            let axis = match cfg.get("axis") {
                Some(Json::Array(a)) if a.len() == 1 => a[0].as_i64().unwrap_or(-1),
                Some(v) => v.as_i64().unwrap_or(-1),
                None => -1,
            };
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
            })
        }
        "BatchNormalization" => {
            let axis = match cfg.get("axis") {
                Some(Json::Array(a)) if a.len() == 1 => a[0].as_i64().unwrap_or(-1),
                Some(v) => v.as_i64().unwrap_or(-1),
                None => -1,
            };
            if axis != -1 && axis != 2 {
                return Err(LstmError::unsupported("BatchNormalization axis", axis));
            }
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
            })
        }
        "GlobalAveragePooling1D" | "GlobalMaxPooling1D" => {
            if cfg.get("data_format").and_then(Json::as_str) == Some("channels_first") {
                return Err(LstmError::unsupported("data_format", "channels_first"));
            }
            Box::new(GlobalPool {
                average: class == "GlobalAveragePooling1D",
                keepdims: cfg.get("keepdims").and_then(Json::as_bool).unwrap_or(false),
            })
        }
        "NotEqual" => Box::new(NotEqual),
        "Any" => Box::new(AnyOp {
            axis: int_of(cfg, "axis", -1),
            keepdims: cfg.get("keepdims").and_then(Json::as_bool).unwrap_or(false),
        }),
        other => {
            return Err(LstmError::unsupported(
                "layer class_name",
                format!(
                    "{other} (layer {name:?}; supported: {})",
                    SUPPORTED.join(", ")
                ),
            ))
        }
    })
}

#[derive(Debug, Clone)]
struct Identity;

impl Op for Identity {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        Ok(inputs.iter().map(|v| (*v).clone()).collect())
    }
}

#[derive(Debug, Clone)]
struct Recurrent {
    name: String,
    net: Network<f32>,
}

impl Op for Recurrent {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        // Keras 2 graphs pass the initial states positionally after x.
        let (x, positional_states) = inputs
            .split_first()
            .ok_or_else(|| LstmError::invalid(format!("layer {}", self.name), "no input"))?;
        let states: Vec<&Value> = if extra.states.is_empty() {
            positional_states.to_vec()
        } else {
            extra.states.clone()
        };
        let x3 = x.data.view().into_dimensionality::<Ix3>().map_err(|_| {
            LstmError::shape(
                format!("input of layer {}", self.name),
                &[0, 0, 0],
                x.data.shape(),
            )
        })?;
        let mask = match extra.mask {
            Some(m) => Some(bool_mask(m, &self.name)?),
            None => x.mask.clone(),
        };
        let init: Vec<ndarray::ArrayView2<f32>> = states
            .iter()
            .map(|s| {
                s.data.view().into_dimensionality::<Ix2>().map_err(|_| {
                    LstmError::shape(
                        format!("initial_state of layer {}", self.name),
                        &[0, 0],
                        s.data.shape(),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let outs = self.net.forward(
            x3,
            (!init.is_empty()).then_some(init.as_slice()),
            mask.as_ref().map(|m| m.view()),
        )?;
        let seq_mask = self.net.returns_sequences().then_some(mask).flatten();
        Ok(outs
            .into_iter()
            .enumerate()
            .map(|(k, data)| Value {
                // the sequence keeps the mask; states and last outputs have none
                mask: if k == 0 || (data.ndim() == 3) {
                    seq_mask.clone()
                } else {
                    None
                },
                data,
            })
            .collect())
    }
}

#[derive(Debug, Clone)]
struct Dense {
    name: String,
    kernel: Array2<f32>,
    bias: Option<Array1<f32>>,
    act: Act,
}

impl Dense {
    fn new(cfg: &Json, name: &str, w: Vec<ArrayD<f32>>) -> Result<Self> {
        let mut w = w.into_iter();
        let kernel = w
            .next()
            .ok_or_else(|| LstmError::MissingWeight {
                name: format!("{name}/kernel"),
            })?
            .into_dimensionality::<Ix2>()
            .map_err(|_| LstmError::shape(format!("{name}/kernel"), &[0, 0], &[]))?;
        let use_bias = cfg.get("use_bias").and_then(Json::as_bool).unwrap_or(true);
        let bias: Option<Array1<f32>> = if use_bias {
            let b = w.next().ok_or_else(|| LstmError::MissingWeight {
                name: format!("{name}/bias"),
            })?;
            if b.len() != kernel.ncols() {
                return Err(LstmError::shape(
                    format!("{name}/bias"),
                    &[kernel.ncols()],
                    b.shape(),
                ));
            }
            Some(b.iter().copied().collect())
        } else {
            None
        };
        Ok(Dense {
            name: name.to_string(),
            kernel,
            bias,
            act: act_of(cfg.get("activation"), "activation")?,
        })
    }
}

impl Op for Dense {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, &self.name)?;
        let shape = x.data.shape().to_vec();
        let width = *shape.last().unwrap_or(&0);
        if width != self.kernel.nrows() {
            return Err(LstmError::shape(
                format!("input of layer {}", self.name),
                &[self.kernel.nrows()],
                &[width],
            ));
        }
        let rows = x.data.len() / width.max(1);
        let x2 = x
            .data
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((rows, width))
            .expect("rows x width elements");
        let n = self.kernel.ncols();
        let mut y = match &self.bias {
            Some(b) => b.broadcast((rows, n)).expect("[N]").to_owned(),
            None => Array2::zeros((rows, n)),
        };
        matmul(
            x2.view(),
            self.kernel.view(),
            y.view_mut(),
            self.bias.is_some(),
        );
        let mut out_shape = shape;
        *out_shape.last_mut().expect("at least 1-D") = n;
        let mut y = y
            .into_shape_with_order(IxDyn(&out_shape))
            .expect("same count");
        apply_act(self.act, &mut y);
        Ok(vec![Value {
            data: y,
            mask: x.mask.clone(),
        }])
    }
}

#[derive(Debug, Clone)]
struct Embedding {
    name: String,
    table: Array2<f32>,
    mask_zero: bool,
}

impl Op for Embedding {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, &self.name)?;
        let (vocab, dim) = self.table.dim();
        let mut shape = x.data.shape().to_vec();
        let mut out = Vec::with_capacity(x.data.len() * dim);
        for &id in x.data.iter() {
            if id < 0.0 || id.fract() != 0.0 || id as usize >= vocab {
                return Err(LstmError::invalid(
                    format!("input of layer {}", self.name),
                    format!("token id {id} is not in 0..{vocab}"),
                ));
            }
            out.extend(self.table.row(id as usize).iter());
        }
        let mask = if self.mask_zero {
            Some(
                x.data
                    .mapv(|v| v != 0.0)
                    .into_dimensionality::<Ix2>()
                    .map_err(|_| {
                        LstmError::shape(format!("input of layer {}", self.name), &[0, 0], &shape)
                    })?,
            )
        } else {
            None
        };
        shape.push(dim);
        Ok(vec![Value {
            data: ArrayD::from_shape_vec(IxDyn(&shape), out).expect("ids x dim values"),
            mask,
        }])
    }
}

#[derive(Debug, Clone)]
struct Masking {
    value: f32,
}

impl Op for Masking {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "Masking")?;
        let x3 = x
            .data
            .view()
            .into_dimensionality::<Ix3>()
            .map_err(|_| LstmError::shape("input of Masking", &[0, 0, 0], x.data.shape()))?;
        let m = x3.map_axis(Axis(2), |row| row.iter().any(|&v| v != self.value));
        let mut out = x3.to_owned();
        for ((b, t, _), v) in out.indexed_iter_mut() {
            if !m[[b, t]] {
                *v = 0.0;
            }
        }
        Ok(vec![Value {
            data: out.into_dyn(),
            mask: Some(m),
        }])
    }
}

#[derive(Debug, Clone)]
struct RepeatVector {
    n: usize,
}

impl Op for RepeatVector {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "RepeatVector")?;
        let x2 = x
            .data
            .view()
            .into_dimensionality::<Ix2>()
            .map_err(|_| LstmError::shape("input of RepeatVector", &[0, 0], x.data.shape()))?;
        let (b, w) = x2.dim();
        let out = ndarray::Array3::from_shape_fn((b, self.n, w), |(i, _, k)| x2[[i, k]]);
        Ok(vec![Value {
            data: out.into_dyn(),
            mask: None,
        }])
    }
}

/// `Reshape(target)` (a `-1` entry inferred), or `Flatten` (no target).
#[derive(Debug, Clone)]
struct Reshape {
    target: Option<Vec<i64>>,
}

impl Op for Reshape {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "Reshape")?;
        let b = x.data.shape()[0];
        let per = x.data.len() / b.max(1);
        let mut shape = vec![b];
        match &self.target {
            None => shape.push(per),
            Some(t) => {
                let known: i64 = t.iter().filter(|&&d| d > 0).product();
                for &d in t {
                    shape.push(if d > 0 {
                        d as usize
                    } else {
                        per / known.max(1) as usize
                    });
                }
            }
        }
        let data = x
            .data
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&shape))
            .map_err(|_| LstmError::shape("target_shape", &shape, x.data.shape()))?;
        Ok(vec![Value { data, mask: None }])
    }
}

#[derive(Debug, Clone)]
struct Permute {
    dims: Vec<usize>,
}

impl Op for Permute {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "Permute")?;
        let mut axes = vec![0];
        axes.extend(&self.dims);
        let valid = axes.len() == x.data.ndim() && {
            let mut s = axes.clone();
            s.sort_unstable();
            s.iter().enumerate().all(|(k, &a)| k == a)
        };
        if !valid {
            return Err(LstmError::shape(
                "Permute dims",
                &[x.data.ndim() - 1],
                &[self.dims.len()],
            ));
        }
        let data = x
            .data
            .clone()
            .permuted_axes(IxDyn(&axes))
            .as_standard_layout()
            .into_owned();
        Ok(vec![Value { data, mask: None }])
    }
}

#[derive(Debug, Clone)]
struct Activate(Act);

impl Op for Activate {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "Activation")?;
        let mut data = x.data.clone();
        apply_act(self.0, &mut data);
        Ok(vec![Value {
            data,
            mask: x.mask.clone(),
        }])
    }
}

/// Keras `ReLU` with parameters, or `LeakyReLU`.
#[derive(Debug, Clone)]
struct Leaky {
    slope: f32,
    threshold: f32,
    max: Option<f32>,
}

impl Op for Leaky {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "ReLU")?;
        let (slope, th, max) = (self.slope, self.threshold, self.max);
        let data = x.data.mapv(|v| {
            let y = if v >= th { v } else { slope * (v - th) };
            max.map_or(y, |m| y.min(m))
        });
        Ok(vec![Value {
            data,
            mask: x.mask.clone(),
        }])
    }
}

#[derive(Debug, Clone)]
struct Merge {
    name: String,
    class: String,
    axis: i64,
}

impl Op for Merge {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let first = inputs.first().ok_or_else(|| {
            LstmError::invalid(format!("layer {}", self.name), "a merge of no tensors")
        })?;
        let data = if self.class == "Concatenate" {
            let nd = first.data.ndim() as i64;
            let axis = if self.axis < 0 {
                nd + self.axis
            } else {
                self.axis
            };
            let views: Vec<_> = inputs.iter().map(|v| v.data.view()).collect();
            ndarray::concatenate(Axis(axis.max(0) as usize), &views)
                .map_err(|e| LstmError::invalid(format!("layer {}", self.name), e.to_string()))?
        } else {
            for v in inputs {
                if v.data.shape() != first.data.shape() {
                    return Err(LstmError::shape(
                        format!("input of layer {}", self.name),
                        first.data.shape(),
                        v.data.shape(),
                    ));
                }
            }
            if self.class == "Subtract" && inputs.len() != 2 {
                return Err(LstmError::invalid(
                    format!("layer {}", self.name),
                    "Subtract takes exactly 2 inputs",
                ));
            }
            let mut acc = first.data.clone();
            for v in &inputs[1..] {
                let f: fn(f32, f32) -> f32 = match self.class.as_str() {
                    "Add" | "Average" => |a, b| a + b,
                    "Subtract" => |a, b| a - b,
                    "Multiply" => |a, b| a * b,
                    "Maximum" => f32::max,
                    _ => f32::min,
                };
                ndarray::Zip::from(&mut acc)
                    .and(&v.data)
                    .for_each(|a, &b| *a = f(*a, b));
            }
            if self.class == "Average" {
                let n = inputs.len() as f32;
                acc.mapv_inplace(|v| v / n);
            }
            acc
        };
        // Keras's compute_mask: Concatenate ORs the masks, a missing one counting as all
        // present (None when no input has one); the other merges OR them, and have none when
        // any input has none.
        let present: Vec<&Array2<bool>> = inputs.iter().filter_map(|v| v.mask.as_ref()).collect();
        let mask = if present.is_empty()
            || (self.class != "Concatenate" && present.len() < inputs.len())
        {
            None
        } else if present.len() < inputs.len() {
            Some(Array2::from_elem(present[0].dim(), true))
        } else {
            let mut m = present[0].clone();
            for r in &present[1..] {
                ndarray::Zip::from(&mut m)
                    .and(*r)
                    .for_each(|a, &b| *a = *a || b);
            }
            Some(m)
        };
        Ok(vec![Value { data, mask }])
    }
}

/// `LayerNormalization` (over the last axis) or `BatchNormalization` with its moving
/// statistics.
#[derive(Debug, Clone)]
struct Norm {
    name: String,
    eps: f32,
    layer: bool,
    gamma: Option<Array1<f32>>,
    beta: Option<Array1<f32>>,
    mean: Option<Array1<f32>>,
    var: Option<Array1<f32>>,
}

impl Op for Norm {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, &self.name)?;
        let last = x.data.ndim() - 1;
        let width = x.data.shape()[last];
        for (w, what) in [
            (&self.gamma, "gamma"),
            (&self.beta, "beta"),
            (&self.mean, "mean"),
        ] {
            if let Some(w) = w {
                if w.len() != width {
                    return Err(LstmError::shape(
                        format!("{}/{what}", self.name),
                        &[width],
                        &[w.len()],
                    ));
                }
            }
        }
        let mut data = x.data.as_standard_layout().into_owned();
        for mut row in data.lanes_mut(Axis(last)) {
            let (mean, var): (Vec<f32>, Vec<f32>) = if self.layer {
                let n = width as f32;
                let m = row.sum() / n;
                let v = row.iter().map(|&a| (a - m) * (a - m)).sum::<f32>() / n;
                (vec![m; width], vec![v; width])
            } else {
                (
                    self.mean.as_ref().expect("batch norm").to_vec(),
                    self.var.as_ref().expect("batch norm").to_vec(),
                )
            };
            for (j, v) in row.iter_mut().enumerate() {
                let inv = 1.0 / (var[j] + self.eps).sqrt();
                let g = self.gamma.as_ref().map_or(1.0, |g| g[j]);
                let b = self.beta.as_ref().map_or(0.0, |b| b[j]);
                *v = (*v - mean[j]) * inv * g + b;
            }
        }
        Ok(vec![Value {
            data,
            mask: x.mask.clone(),
        }])
    }
}

/// `GlobalAveragePooling1D` (over unmasked steps only) or `GlobalMaxPooling1D` (every step:
/// Keras 3's ignores masks).
#[derive(Debug, Clone)]
struct GlobalPool {
    average: bool,
    keepdims: bool,
}

impl Op for GlobalPool {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "GlobalPooling1D")?;
        let x3 = x.data.view().into_dimensionality::<Ix3>().map_err(|_| {
            LstmError::shape("input of GlobalPooling1D", &[0, 0, 0], x.data.shape())
        })?;
        let (b, t, w) = x3.dim();
        let mask = match extra.mask {
            Some(m) => Some(bool_mask(m, "GlobalPooling1D")?),
            None => x.mask.clone(),
        };
        let mut out = Array2::<f32>::zeros((b, w));
        for i in 0..b {
            for k in 0..w {
                if self.average {
                    let (mut sum, mut n) = (0.0f32, 0.0f32);
                    for s in 0..t {
                        let present = mask.as_ref().is_none_or(|m| m[[i, s]]);
                        if present {
                            sum += x3[[i, s, k]];
                            n += 1.0;
                        }
                    }
                    out[[i, k]] = sum / n;
                } else {
                    out[[i, k]] = x3
                        .slice(s![i, .., k])
                        .iter()
                        .copied()
                        .fold(f32::NEG_INFINITY, f32::max);
                }
            }
        }
        let data = if self.keepdims {
            out.insert_axis(Axis(1)).into_dyn()
        } else {
            out.into_dyn()
        };
        Ok(vec![Value { data, mask: None }])
    }
}

/// The op layer Keras saves for `x != scalar` (a functional `Masking`'s mask).
#[derive(Debug, Clone)]
struct NotEqual;

impl Op for NotEqual {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "NotEqual")?;
        let c = *extra
            .scalars
            .first()
            .ok_or_else(|| LstmError::invalid("NotEqual", "compares a tensor with a scalar"))?
            as f32;
        Ok(vec![Value {
            data: x.data.mapv(|v| f32::from(u8::from(v != c))),
            mask: None,
        }])
    }
}

/// The op layer `Any(axis)`.
#[derive(Debug, Clone)]
struct AnyOp {
    axis: i64,
    keepdims: bool,
}

impl Op for AnyOp {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "Any")?;
        let nd = x.data.ndim() as i64;
        let axis = Axis(
            (if self.axis < 0 {
                nd + self.axis
            } else {
                self.axis
            })
            .max(0) as usize,
        );
        let mut data = x.data.map_axis(axis, |lane| {
            f32::from(u8::from(lane.iter().any(|&v| v != 0.0)))
        });
        if self.keepdims {
            data = data.insert_axis(axis);
        }
        Ok(vec![Value { data, mask: None }])
    }
}
