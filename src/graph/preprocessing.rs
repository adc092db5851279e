//! Keras's `Normalization` preprocessing layer, as time-series models use it inside the
//! model: `(x - mean) / max(sqrt(variance), 1e-7)` (or, with `invert`, `mean + x ·
//! max(sqrt(variance), 1e-7)`), the statistics kept along `axis` and broadcast along the
//! other axes, from the layer's adapted weights (`mean`, `variance`, `count`) or its config.
//! The mask passes through. GPU twin: `NormalizeStage` (binary.wgsl's subtract and divide,
//! or multiply and add, against the broadcast constants this file computes).

use super::ops::{one_input, Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::error::{LstmError, Result};
use crate::gpu::plan::{Args, BinaryOp, BinaryStage, PlanContext, Tensor};
use ndarray::{ArrayD, IxDyn};
use serde_json::Value as Json;

/// Keras's `backend.epsilon()`.
const EPSILON: f32 = 1e-7;

#[derive(Debug, Clone)]
pub(crate) struct Normalize {
    name: String,
    /// The kept axes as the config gives them (negative from the end).
    axis: Vec<i64>,
    mean: ArrayD<f32>,
    variance: ArrayD<f32>,
    invert: bool,
}

/// A config value (`null`, a number or nested lists) as an array, or None for `null`.
fn array_of(v: &Json, key: &str) -> Result<Option<ArrayD<f32>>> {
    fn walk(v: &Json, shape: &mut Vec<usize>, depth: usize, out: &mut Vec<f32>) -> bool {
        match v {
            Json::Number(n) => {
                out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
                depth == shape.len()
            }
            Json::Array(items) => {
                if depth == shape.len() {
                    shape.push(items.len());
                } else if shape[depth] != items.len() {
                    return false;
                }
                items.iter().all(|i| walk(i, shape, depth + 1, out))
            }
            _ => false,
        }
    }
    if v.is_null() {
        return Ok(None);
    }
    let (mut shape, mut values) = (Vec::new(), Vec::new());
    if !walk(v, &mut shape, 0, &mut values) {
        return Err(LstmError::bad_config(
            key,
            "expected a number or a rectangular list",
        ));
    }
    ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map(Some)
        .map_err(|e| LstmError::bad_config(key, e.to_string()))
}

impl Normalize {
    /// The layer `name` from its config and weights (`[mean, variance, count]` when adapted).
    pub(crate) fn new(cfg: &Json, name: &str, weights: Vec<ArrayD<f32>>) -> Result<Self> {
        let axis = match cfg.get("axis") {
            None => vec![-1],
            Some(Json::Null) => Vec::new(),
            Some(Json::Number(n)) => vec![n.as_i64().unwrap_or(-1)],
            Some(Json::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| LstmError::bad_config("axis", "expected integers"))
                })
                .collect::<Result<_>>()?,
            Some(other) => return Err(LstmError::unsupported("axis", other)),
        };
        let null = Json::Null;
        let given = (
            array_of(cfg.get("mean").unwrap_or(&null), "mean")?,
            array_of(cfg.get("variance").unwrap_or(&null), "variance")?,
        );
        let (mean, variance) = match given {
            (Some(m), Some(v)) => (m, v),
            (None, None) => {
                let mut w = weights.into_iter();
                match (w.next(), w.next()) {
                    (Some(m), Some(v)) => (m, v),
                    _ => {
                        return Err(LstmError::MissingWeight {
                            name: format!("{name}/mean and {name}/variance (an adapted layer)"),
                        })
                    }
                }
            }
            _ => {
                return Err(LstmError::bad_config(
                    "mean",
                    format!("layer {name}: mean and variance are given together"),
                ))
            }
        };
        if mean.shape() != variance.shape() {
            return Err(LstmError::shape(
                format!("{name}/variance"),
                mean.shape(),
                variance.shape(),
            ));
        }
        Ok(Normalize {
            name: name.to_string(),
            axis,
            mean,
            variance,
            invert: cfg.get("invert").and_then(Json::as_bool).unwrap_or(false),
        })
    }

    /// The statistics as Keras broadcasts them for an input of `shape`: the mean and
    /// `max(sqrt(variance), epsilon)`, each of shape `[1, ...]` with the kept axes' sizes
    /// and 1 elsewhere (the values aligned to the kept axes from the right, as Keras).
    pub(crate) fn broadcast(&self, shape: &[usize]) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        let nd = shape.len() as i64;
        let mut keep: Vec<usize> = Vec::new();
        for &a in &self.axis {
            if a < -nd || a >= nd {
                return Err(LstmError::invalid(
                    format!("axis of layer {}", self.name),
                    format!("{a} is out of range for an input of rank {nd}"),
                ));
            }
            let a = if a < 0 { a + nd } else { a } as usize;
            if a == 0 {
                return Err(LstmError::unsupported(
                    format!("axis of layer {}", self.name),
                    "the batch axis",
                ));
            }
            keep.push(a);
        }
        keep.sort_unstable();
        let mut expanded = vec![1usize; shape.len()];
        let m = self.mean.shape();
        if m.len() > keep.len() {
            return Err(LstmError::shape(
                format!("{}/mean", self.name),
                &keep.iter().map(|&a| shape[a]).collect::<Vec<_>>(),
                m,
            ));
        }
        for i in 1..=m.len() {
            expanded[keep[keep.len() - i]] = m[m.len() - i];
        }
        let reshape = |a: &ArrayD<f32>| -> Result<ArrayD<f32>> {
            let r = a
                .to_owned()
                .into_shape_with_order(IxDyn(&expanded))
                .map_err(|_| {
                    LstmError::shape(format!("{}/mean", self.name), &expanded, a.shape())
                })?;
            // every kept axis must match the input (or stretch from 1)
            for (d, (&e, &s)) in expanded.iter().zip(shape).enumerate() {
                if e != 1 && e != s {
                    return Err(LstmError::shape(
                        format!("input of layer {} (axis {d})", self.name),
                        &expanded,
                        shape,
                    ));
                }
            }
            Ok(r)
        };
        let mean = reshape(&self.mean)?;
        let scale = reshape(&self.variance)?.mapv(|v| v.sqrt().max(EPSILON));
        Ok((mean, scale))
    }
}

impl Op for Normalize {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, &self.name)?;
        let (mean, scale) = self.broadcast(x.data.shape())?;
        let data = if self.invert {
            &mean + &(&x.data * &scale)
        } else {
            &(&x.data - &mean) / &scale
        };
        Ok(vec![Value {
            data,
            mask: x.mask.clone(),
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        Ok(Box::new(NormalizeStage { op: self.clone() }))
    }
}

/// `Normalization` on the GPU: two binary.wgsl dispatches against the broadcast constants.
#[derive(Debug)]
pub(super) struct NormalizeStage {
    op: Normalize,
}

impl GpuStage for NormalizeStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let x = args.one(&self.op.name)?;
        let (mean, scale) = self.op.broadcast(&x.shape)?;
        let constant =
            |cx: &mut PlanContext<'_, '_>, a: &ArrayD<f32>, what: &str| -> Result<Tensor> {
                let values: Vec<f32> = a.iter().copied().collect();
                Ok(Tensor {
                    buf: cx.constant(&format!("layer {} {what}", self.op.name), &values)?,
                    offset: 0,
                    shape: a.shape().to_vec(),
                    mask: None,
                })
            };
        let (m, s) = (constant(cx, &mean, "mean")?, constant(cx, &scale, "scale")?);
        let step =
            |cx: &mut PlanContext<'_, '_>, op: BinaryOp, part: &str, a: &Tensor, b: &Tensor| {
                let stage = BinaryStage {
                    name: format!("{} ({part})", self.op.name),
                    op,
                    average: false,
                };
                let inputs = [a.clone(), b.clone()];
                stage
                    .plan(
                        cx,
                        &Args {
                            inputs: &inputs,
                            states: &[],
                            mask: None,
                            scalars: &[],
                            kwargs: args.kwargs,
                        },
                    )
                    .map(|mut o| o.remove(0))
            };
        let mut out = if self.op.invert {
            let scaled = step(cx, BinaryOp::Multiply, "scale", x, &s)?;
            step(cx, BinaryOp::Add, "shift", &m, &scaled)?
        } else {
            let centred = step(cx, BinaryOp::Subtract, "centre", x, &m)?;
            step(cx, BinaryOp::Divide, "scale", &centred, &s)?
        };
        out.shape = x.shape.clone();
        out.mask = x.mask.clone();
        Ok(vec![out])
    }
}
