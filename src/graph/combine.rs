//! The graph's layers that combine or reduce tensors on the CPU: the merges, layer and batch
//! normalization, global pooling, and the op layers Keras saves for a functional `Masking`.

use super::ops::{bool_mask, fitting_mask, one_input, Extra, Op};
use super::Value;
use crate::error::{LstmError, Result};
use ndarray::{s, Array1, Array2, Axis, Ix3};

#[derive(Debug, Clone)]
pub(super) struct Merge {
    pub(super) name: String,
    pub(super) class: String,
    pub(super) axis: i64,
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
        if let Some(m0) = present.first() {
            for m in &present {
                fitting_mask(Some(m), m0.dim(), &self.name)?;
            }
        }
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
pub(super) struct Norm {
    pub(super) name: String,
    pub(super) eps: f32,
    pub(super) layer: bool,
    pub(super) gamma: Option<Array1<f32>>,
    pub(super) beta: Option<Array1<f32>>,
    pub(super) mean: Option<Array1<f32>>,
    pub(super) var: Option<Array1<f32>>,
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
pub(super) struct GlobalPool {
    pub(super) average: bool,
    pub(super) keepdims: bool,
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
        fitting_mask(mask.as_ref(), (b, t), "GlobalPooling1D")?;
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
pub(super) struct NotEqual;

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
pub(super) struct AnyOp {
    pub(super) axis: i64,
    pub(super) keepdims: bool,
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
