//! The graph's layers that combine or reduce tensors on the CPU: the merges, layer and batch
//! normalization, global pooling, and the op layers Keras saves for a functional `Masking`.

use super::ops::{bool_mask, fitting_mask, one_input, stage, Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::error::{LstmError, Result};
use crate::gpu::plan::{
    BinaryOp, BinaryStage, DotStage, GatherStage, Layout, NormStage, PoolStage, UnaryOp, UnaryStage,
};
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
            // Operands of other shapes broadcast as numpy's (the op layers' masks do).
            let shape = crate::gpu::plan::broadcast_shape(
                inputs.iter().map(|v| v.data.shape()),
                &format!("layer {}", self.name),
            )?;
            let stretched = |v: &Value| -> Result<ndarray::ArrayD<f32>> {
                v.data
                    .broadcast(ndarray::IxDyn(&shape))
                    .map(|b| b.to_owned())
                    .ok_or_else(|| {
                        LstmError::shape(
                            format!("input of layer {}", self.name),
                            &shape,
                            v.data.shape(),
                        )
                    })
            };
            if self.class == "Subtract" && inputs.len() != 2 {
                return Err(LstmError::invalid(
                    format!("layer {}", self.name),
                    "Subtract takes exactly 2 inputs",
                ));
            }
            let mut acc = stretched(first)?;
            for v in &inputs[1..] {
                let v = &Value {
                    data: stretched(v)?,
                    mask: None,
                };
                let f: fn(f32, f32) -> f32 = match self.class.as_str() {
                    "Add" | "Average" => |a, b| a + b,
                    "Subtract" => |a, b| a - b,
                    "Multiply" => |a, b| a * b,
                    "Maximum" => f32::max,
                    "LogicalOr" => |a, b| f32::from(u8::from(a != 0.0 || b != 0.0)),
                    "LogicalAnd" => |a, b| f32::from(u8::from(a != 0.0 && b != 0.0)),
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
        if self.class.starts_with("Logical") {
            // (op layers, not layers: no masks)
            return Ok(vec![Value { data, mask: None }]);
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|v| v.data.shape()).collect();
        let masks: Vec<Option<&Array2<bool>>> = inputs.iter().map(|v| v.mask.as_ref()).collect();
        let mask = merge_mask(&self.class, self.axis, &shapes, &masks, &self.name)?;
        Ok(vec![Value { data, mask }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        let op = match self.class.as_str() {
            "Concatenate" => {
                return stage(GatherStage {
                    name: self.name.clone(),
                    layout: Layout::Concat(self.axis),
                })
            }
            "Add" | "Average" => BinaryOp::Add,
            "Subtract" => BinaryOp::Subtract,
            "Multiply" => BinaryOp::Multiply,
            "Maximum" => BinaryOp::Maximum,
            "LogicalOr" => BinaryOp::Or,
            "LogicalAnd" => BinaryOp::And,
            _ => BinaryOp::Minimum,
        };
        stage(BinaryStage {
            name: self.name.clone(),
            op,
            average: self.class == "Average",
        })
    }
}

/// The mask of a merge layer (`class`, `axis` for a Concatenate) of inputs of `shapes` with
/// `masks`, as Keras's `compute_mask`: Concatenate ORs the masks, a missing one counting as
/// all present (None when no input has one), and concatenates them when it joins along
/// time; the other merges OR them, and have none when any input has none. Both paths use it.
pub(crate) fn merge_mask(
    class: &str,
    axis: i64,
    shapes: &[&[usize]],
    masks: &[Option<&Array2<bool>>],
    name: &str,
) -> Result<Option<Array2<bool>>> {
    let present: Vec<&Array2<bool>> = masks.iter().filter_map(|m| *m).collect();
    let nd = shapes.first().map_or(0, |s| s.len()) as i64;
    let time_axis =
        class == "Concatenate" && nd >= 3 && (if axis < 0 { nd + axis } else { axis }) == 1;
    if time_axis && !present.is_empty() {
        // Concatenating along time concatenates the masks (a missing one all present),
        // as Keras's masks broadcast, concatenated and reduced over the last axis give.
        let parts: Vec<Array2<bool>> = shapes
            .iter()
            .zip(masks)
            .map(|(shape, m)| {
                let (b, t) = (shape[0], shape[1]);
                let m = m
                    .cloned()
                    .unwrap_or_else(|| Array2::from_elem((b, t), true));
                fitting_mask(Some(&m), (b, t), name)?;
                Ok(m)
            })
            .collect::<Result<_>>()?;
        let views: Vec<_> = parts.iter().map(|m| m.view()).collect();
        let mask = ndarray::concatenate(Axis(1), &views)
            .map_err(|e| LstmError::invalid(format!("layer {name}"), e.to_string()))?;
        return Ok(Some(mask));
    }
    if let Some(m0) = present.first() {
        for m in &present {
            fitting_mask(Some(m), m0.dim(), name)?;
        }
    }
    Ok(
        if present.is_empty() || (class != "Concatenate" && present.len() < masks.len()) {
            None
        } else if present.len() < masks.len() {
            Some(Array2::from_elem(present[0].dim(), true))
        } else {
            let mut m = present[0].clone();
            for r in &present[1..] {
                ndarray::Zip::from(&mut m)
                    .and(*r)
                    .for_each(|a, &b| *a = *a || b);
            }
            Some(m)
        },
    )
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
    /// The config's axis (`-1` or a positive index): only the last axis is supported, which
    /// a positive index names only for inputs of its rank.
    pub(super) axis: i64,
}

/// An error unless `axis` (-1 or positive) is the last axis of a rank-`ndim` input.
pub(crate) fn last_axis(name: &str, axis: i64, ndim: usize) -> Result<()> {
    if axis == -1 || axis == ndim as i64 - 1 {
        Ok(())
    } else {
        Err(LstmError::unsupported(
            "axis",
            format!(
                "{axis} of layer {name} on a rank-{ndim} input (only the last axis is supported)"
            ),
        ))
    }
}

impl Op for Norm {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, &self.name)?;
        last_axis(&self.name, self.axis, x.data.ndim())?;
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

    fn params(&self) -> usize {
        [&self.gamma, &self.beta, &self.mean, &self.var]
            .iter()
            .map(|w| w.as_ref().map_or(0, |a| a.len()))
            .sum()
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        let mut vec = |w: &Option<Array1<f32>>, what: &str| -> Result<Option<wgpu::Buffer>> {
            w.as_ref()
                .map(|a| up.floats(&format!("{}/{what}", self.name), &a.to_vec()))
                .transpose()
        };
        let width = [&self.gamma, &self.beta, &self.mean]
            .iter()
            .find_map(|w| w.as_ref().map(|a| a.len()))
            .unwrap_or(0);
        stage(NormStage {
            name: self.name.clone(),
            axis: self.axis,
            width,
            eps: self.eps,
            layer: self.layer,
            gamma: vec(&self.gamma, "gamma")?,
            beta: vec(&self.beta, "beta")?,
            mean: vec(&self.mean, "moving_mean")?,
            var: vec(&self.var, "moving_variance")?,
        })
    }
}

/// `GlobalAveragePooling1D` (over unmasked steps only) or `GlobalMaxPooling1D` (every step:
/// Keras 3's ignores masks); with `spatial`, `GlobalAveragePooling2D`/`GlobalMaxPooling2D`:
/// the same over the `H·W` positions of `[B, H, W, C]` (no mask).
#[derive(Debug, Clone)]
pub(super) struct GlobalPool {
    pub(super) average: bool,
    pub(super) keepdims: bool,
    pub(super) spatial: bool,
}

impl Op for GlobalPool {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "GlobalPooling1D")?;
        let flat;
        let x3 = if self.spatial {
            let x4 = x
                .data
                .view()
                .into_dimensionality::<ndarray::Ix4>()
                .map_err(|_| {
                    LstmError::shape("input of GlobalPooling2D", &[0, 0, 0, 0], x.data.shape())
                })?;
            let (b, h, w, c) = x4.dim();
            flat = x4
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order((b, h * w, c))
                .expect("the same values");
            flat.view()
        } else {
            x.data.view().into_dimensionality::<Ix3>().map_err(|_| {
                LstmError::shape("input of GlobalPooling1D", &[0, 0, 0], x.data.shape())
            })?
        };
        let (b, t, w) = x3.dim();
        let mask = match extra.mask {
            _ if self.spatial => None,
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
        let data = if self.keepdims && self.spatial {
            out.insert_axis(Axis(1)).insert_axis(Axis(1)).into_dyn()
        } else if self.keepdims {
            out.insert_axis(Axis(1)).into_dyn()
        } else {
            out.into_dyn()
        };
        Ok(vec![Value { data, mask: None }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(PoolStage {
            name: "GlobalPooling1D".into(),
            max: !self.average,
            window: None,
            keepdims: self.keepdims,
            spatial: self.spatial,
        })
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

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(UnaryStage {
            name: "NotEqual".into(),
            op: UnaryOp::NotEqual,
        })
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

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(UnaryStage {
            name: "Any".into(),
            op: UnaryOp::Any {
                axis: self.axis,
                keepdims: self.keepdims,
            },
        })
    }
}

/// Keras `Dot(axes, normalize)`: the batch dot product of two tensors along one axis each
/// (after L2-normalizing them along it, with `normalize`). No mask (its `compute_mask`).
#[derive(Debug, Clone)]
pub(super) struct Dot {
    pub(super) name: String,
    /// The axis of each input (batch = 0; negative from the end).
    pub(super) axes: (i64, i64),
    pub(super) normalize: bool,
    /// Keras 2's normalization (a file Keras 2 wrote): `x · rsqrt(max(Σx², 1e-12))`, where
    /// Keras 3's is `x · min(rsqrt(Σx²), 1e7)`.
    pub(super) keras2_normalize: bool,
}

impl Dot {
    /// `x` as `[B, P, K]` with its axis `ax` last (`first` false) or as `[B, K, P]` with it
    /// first after the batch (`first` true), and the kept dimensions.
    fn arrange(
        x: &ndarray::ArrayD<f32>,
        ax: usize,
        first: bool,
    ) -> (ndarray::Array3<f32>, Vec<usize>) {
        let nd = x.ndim();
        let mut order: Vec<usize> = (0..nd).filter(|&a| a != ax).collect();
        let kept: Vec<usize> = order[1..].iter().map(|&a| x.shape()[a]).collect();
        if first {
            order.insert(1, ax);
        } else {
            order.push(ax);
        }
        let p: usize = kept.iter().product();
        let (b, k) = (x.shape()[0], x.shape()[ax]);
        let moved = x
            .view()
            .permuted_axes(ndarray::IxDyn(&order))
            .as_standard_layout()
            .into_owned();
        let shape = if first { (b, k, p) } else { (b, p, k) };
        (
            moved
                .into_shape_with_order(shape)
                .expect("the same number of values"),
            kept,
        )
    }
}

impl Op for Dot {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let what = format!("layer {}", self.name);
        let [x, y] = inputs else {
            return Err(LstmError::invalid(what, "Dot takes 2 inputs"));
        };
        let axis = |a: i64, nd: usize| -> Result<usize> {
            let a = if a < 0 { a + nd as i64 } else { a };
            if a <= 0 || a as usize >= nd {
                return Err(LstmError::invalid(
                    format!("axes of {what}"),
                    format!("{a} is not a non-batch axis of a rank-{nd} input"),
                ));
            }
            Ok(a as usize)
        };
        let (ax, ay) = (
            axis(self.axes.0, x.data.ndim())?,
            axis(self.axes.1, y.data.ndim())?,
        );
        let (mut xd, mut yd) = (x.data.clone(), y.data.clone());
        if self.normalize {
            for (d, a) in [(&mut xd, ax), (&mut yd, ay)] {
                for mut lane in d.lanes_mut(Axis(a)) {
                    let sq: f32 = lane.iter().map(|v| v * v).sum();
                    let inv = if self.keras2_normalize {
                        1.0 / sq.max(1e-12).sqrt()
                    } else {
                        (1.0 / sq.sqrt()).min(1e7)
                    };
                    lane.mapv_inplace(|v| v * inv);
                }
            }
        }
        if xd.shape()[0] != yd.shape()[0] || xd.shape()[ax] != yd.shape()[ay] {
            return Err(LstmError::shape(
                format!("second input of {what}"),
                &[xd.shape()[0], xd.shape()[ax]],
                &[yd.shape()[0], yd.shape()[ay]],
            ));
        }
        let (xm, xkeep) = Dot::arrange(&xd, ax, false);
        let (ym, ykeep) = Dot::arrange(&yd, ay, true);
        let b = xm.dim().0;
        let mut out = ndarray::Array3::<f32>::zeros((b, xm.dim().1, ym.dim().2));
        for i in 0..b {
            out.index_axis_mut(Axis(0), i)
                .assign(&xm.index_axis(Axis(0), i).dot(&ym.index_axis(Axis(0), i)));
        }
        let mut shape = vec![b];
        shape.extend(xkeep);
        shape.extend(ykeep);
        if shape.len() == 1 {
            shape.push(1);
        }
        let data = out
            .into_shape_with_order(ndarray::IxDyn(&shape))
            .expect("the same number of values");
        Ok(vec![Value { data, mask: None }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(DotStage {
            name: self.name.clone(),
            axes: self.axes,
            normalize: self.normalize,
            keras2_normalize: self.keras2_normalize,
        })
    }
}
