//! The plan builder of the layers that move values without arithmetic, all through
//! gather.wgsl (a strided copy of a box of up to 4 axes): `RepeatVector`, `Permute`,
//! `ZeroPadding1D`/`2D`, `Cropping1D`/`2D`, `UpSampling1D`/`2D`, `Reshape`/`Flatten` (no
//! dispatch: the same buffer, another shape) and `Concatenate`; and the copies other builders
//! need (a recurrent layer's initial state into its state buffer, a Bidirectional layer's
//! halves). CPU twins: `RepeatVector`, `Permute`, `Reshape` in src/graph/core.rs, `Pad` and
//! `Pad2` in src/graph/padding.rs, `Merge` in src/graph/combine.rs.

use super::elementwise::merged_mask;
use super::{Args, GpuStage, PlanContext, Tensor};
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::params::{GatherParams, GATHER_THREADS};
use crate::gpu::stats::Phase;

/// Axes a gather covers (batch included).
pub(crate) const GATHER_RANK: usize = 4;

/// One strided copy: the box of `dims` values (the last axis fastest) written at
/// `out_base + Σ c·out_stride`, read from `in_base + Σ (c / div - pad)·in_stride`, zero where
/// that index leaves `[0, in_dims)`. Shorter shapes are right-aligned (unit axes in front).
#[derive(Debug, Clone)]
pub(crate) struct Gather {
    pub dims: Vec<usize>,
    pub out_stride: Vec<usize>,
    pub out_base: usize,
    pub in_stride: Vec<usize>,
    pub in_base: usize,
    pub in_dims: Vec<usize>,
    pub pad: Vec<i64>,
    pub div: Vec<usize>,
}

/// Row-major strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

impl Gather {
    /// A plain copy of a tensor of `shape` (into a tensor of the same shape).
    pub fn copy(shape: &[usize]) -> Gather {
        Gather {
            dims: shape.to_vec(),
            out_stride: strides(shape),
            out_base: 0,
            in_stride: strides(shape),
            in_base: 0,
            in_dims: shape.to_vec(),
            pad: vec![0; shape.len()],
            div: vec![1; shape.len()],
        }
    }

    fn params(&self, what: &str) -> Result<GatherParams> {
        let n = self.dims.len();
        if n > GATHER_RANK {
            return Err(LstmError::UnsupportedOnPath {
                what: format!("{what} on a rank-{n} tensor"),
                path: "gpu".into(),
                hint: format!(
                    "the GPU moves tensors of up to {GATHER_RANK} axes (batch included); run \
                     this model on the CPU path"
                ),
            });
        }
        let count: usize = self.dims.iter().product();
        let big = |v: usize, name: &str| -> Result<u32> {
            u32::try_from(v).map_err(|_| {
                LstmError::invalid(
                    what,
                    format!("{name} {v} exceeds the kernel's 32-bit index"),
                )
            })
        };
        let lane = |v: &[usize], fill: usize, name: &str| -> Result<[u32; 4]> {
            let mut a = [fill as u32; 4];
            for (k, &x) in v.iter().enumerate() {
                a[GATHER_RANK - n + k] = big(x, name)?;
            }
            Ok(a)
        };
        let mut pad = [0i32; 4];
        for (k, &x) in self.pad.iter().enumerate() {
            pad[GATHER_RANK - n + k] = i32::try_from(x)
                .map_err(|_| LstmError::invalid(what, format!("padding {x} is too large")))?;
        }
        Ok(GatherParams {
            count: big(count, "size")?,
            out_base: big(self.out_base, "offset")?,
            in_base: big(self.in_base, "offset")?,
            _pad0: 0,
            box_dims: lane(&self.dims, 1, "size")?,
            out_stride: lane(&self.out_stride, 0, "stride")?,
            in_stride: lane(&self.in_stride, 0, "stride")?,
            in_dims: lane(&self.in_dims, 1, "size")?,
            pad,
            div: lane(&self.div, 1, "size")?.map(|d| d.max(1)),
        })
    }
}

impl PlanContext<'_, '_> {
    /// Appends the copy `g` from `x` into `out`; `what` names the layer in errors.
    pub fn gather(
        &mut self,
        what: &str,
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        g: &Gather,
    ) -> Result<()> {
        let gp = g.params(what)?;
        if gp.count == 0 {
            return Ok(());
        }
        let params = self.uniform("gather parameters", bytemuck::bytes_of(&gp));
        let bind = self.bind(Kernel::Gather, &[&params, x, out]);
        let groups = self.grid(what, gp.count as usize, GATHER_THREADS)?;
        let pipeline = self.pipeline(Kernel::Gather)?;
        self.dispatch(&pipeline, &bind, &[], groups);
        Ok(())
    }

    /// A new tensor of `shape` filled by `g` from `x` (no mask).
    pub fn gathered(
        &mut self,
        what: &str,
        x: &wgpu::Buffer,
        shape: Vec<usize>,
        g: &Gather,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let out = self.storage(what, (n * 4) as u64, wgpu::BufferUsages::COPY_SRC)?;
        self.gather(what, x, &out, g)?;
        Ok(Tensor {
            buf: out,
            offset: 0,
            shape,
            mask: None,
        })
    }
}

/// How a [`GatherStage`] arranges its input.
#[derive(Debug, Clone)]
pub(crate) enum Layout {
    /// `RepeatVector(n)`: `[B, W]` to `[B, n, W]`.
    Repeat(usize),
    /// `Permute(dims)` (1-based axes after the batch axis).
    Permute(Vec<usize>),
    /// ZeroPadding1D / Cropping1D / UpSampling1D on `[B, T, C]`: crop `crop` steps, repeat
    /// each `repeat` times, pad `pad` zero steps.
    Pad {
        pad: (usize, usize),
        crop: (usize, usize),
        repeat: usize,
    },
    /// ZeroPadding2D / Cropping2D / UpSampling2D on `[B, H, W, C]`.
    Pad2(crate::graph::Pad2),
    /// `Reshape(target)` (`-1` = the rest) or `Flatten` (None).
    Reshape(Option<Vec<i64>>),
    /// `Concatenate(axis)`.
    Concat(i64),
    /// `ExpandDims(axis)` (an op layer of Keras's merged masks): a view with a unit axis.
    ExpandDims(i64),
    /// The layers that are the identity at inference (Dropout, GaussianNoise, ...): every
    /// input passed on as it is, with its mask.
    Identity,
}

/// A layer that only moves values (see [`Layout`]).
#[derive(Debug)]
pub(crate) struct GatherStage {
    pub name: String,
    pub layout: Layout,
}

impl GpuStage for GatherStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let what = format!("layer {}", self.name);
        match self.layout {
            Layout::Concat(axis) => return Ok(vec![concat(cx, &what, args.inputs, axis)?]),
            Layout::Identity => return Ok(args.inputs.to_vec()),
            _ => {}
        }
        let x = args.one(&self.name)?;
        let out = match &self.layout {
            Layout::Repeat(n) => {
                let [b, w] = x.shape[..] else {
                    return Err(LstmError::shape(
                        format!("input of {what}"),
                        &[0, 0],
                        &x.shape,
                    ));
                };
                let g = Gather {
                    dims: vec![b, *n, w],
                    out_stride: strides(&[b, *n, w]),
                    out_base: 0,
                    in_stride: vec![w, 0, 1],
                    in_base: 0,
                    in_dims: vec![b, usize::MAX >> 33, w],
                    pad: vec![0; 3],
                    div: vec![1; 3],
                };
                cx.gathered(&what, &x.buf, vec![b, *n, w], &g)?
            }
            Layout::Permute(dims) => {
                let mut axes = vec![0];
                axes.extend(dims);
                let mut sorted = axes.clone();
                sorted.sort_unstable();
                if axes.len() != x.shape.len() || sorted.iter().enumerate().any(|(k, &a)| k != a) {
                    return Err(LstmError::shape(
                        "Permute dims",
                        &[x.shape.len() - 1],
                        &[dims.len()],
                    ));
                }
                let shape: Vec<usize> = axes.iter().map(|&a| x.shape[a]).collect();
                let in_s = strides(&x.shape);
                let g = Gather {
                    dims: shape.clone(),
                    out_stride: strides(&shape),
                    out_base: 0,
                    in_stride: axes.iter().map(|&a| in_s[a]).collect(),
                    in_base: 0,
                    in_dims: shape.clone(),
                    pad: vec![0; shape.len()],
                    div: vec![1; shape.len()],
                };
                cx.gathered(&what, &x.buf, shape, &g)?
            }
            Layout::Pad { pad, crop, repeat } => {
                let (b, t, c) = x.dims3(&format!("input of {what}"))?;
                if crop.0 + crop.1 > t {
                    return Err(LstmError::invalid(
                        "Cropping1D",
                        format!("crops {crop:?} steps from {t}"),
                    ));
                }
                let kept = t - crop.0 - crop.1;
                let out_t = pad.0 + kept * repeat + pad.1;
                let shape = vec![b, out_t, c];
                // out step s reads (s - pad.0) / repeat + crop.0 when within the kept steps:
                // as c / div - pad with div = repeat, pad.0 a multiple of it via the base.
                let g = Gather {
                    dims: vec![b, out_t, c],
                    out_stride: strides(&shape),
                    out_base: 0,
                    in_stride: vec![t * c, c, 1],
                    in_base: crop.0 * c,
                    in_dims: vec![b, kept, c],
                    pad: vec![0, 0, 0],
                    div: vec![1, *repeat, 1],
                };
                let out = cx.storage(
                    &what,
                    (b * out_t * c * 4) as u64,
                    wgpu::BufferUsages::COPY_SRC,
                )?;
                // The padded steps on the left: a box shifted by pad.0 steps of the output.
                let mut inner = g.clone();
                inner.dims = vec![b, kept * repeat + pad.1, c];
                inner.out_base = pad.0 * c;
                cx.gather(&what, &x.buf, &out, &inner)?;
                if pad.0 > 0 {
                    let mut left = g;
                    left.dims = vec![b, pad.0, c];
                    left.in_dims = vec![b, 0, c];
                    cx.gather(&what, &x.buf, &out, &left)?;
                }
                Tensor {
                    buf: out,
                    offset: 0,
                    shape,
                    mask: None,
                }
            }
            Layout::Pad2(p2) => {
                let [b, h, w, c] = match x.shape[..] {
                    [b, h, w, c] => [b, h, w, c],
                    _ => {
                        return Err(LstmError::shape(
                            format!("input of {what}"),
                            &[0, 0, 0, 0],
                            &x.shape,
                        ))
                    }
                };
                let (kept, [oh, ow]) = p2.sizes([h, w])?;
                let shape = vec![b, oh, ow, c];
                // out (oy, ox) reads (oy / repeat - pad, ox / repeat - pad) of the cropped
                // box: a layer pads (repeat 1) or repeats (pad 0), never both
                let g = Gather {
                    dims: shape.clone(),
                    out_stride: strides(&shape),
                    out_base: 0,
                    in_stride: vec![h * w * c, w * c, c, 1],
                    in_base: (p2.crop[0].0 * w + p2.crop[1].0) * c,
                    in_dims: vec![b, kept[0], kept[1], c],
                    pad: vec![0, p2.pad[0].0 as i64, p2.pad[1].0 as i64, 0],
                    div: vec![1, p2.repeat[0], p2.repeat[1], 1],
                };
                let out = cx.storage(
                    &what,
                    (b * oh * ow * c * 4) as u64,
                    wgpu::BufferUsages::COPY_SRC,
                )?;
                if b * oh * ow * c > 0 {
                    cx.gather(&what, &x.buf, &out, &g)?;
                }
                Tensor {
                    buf: out,
                    offset: 0,
                    shape,
                    mask: None,
                }
            }
            Layout::Reshape(target) => {
                let shape = crate::graph::reshape_target(x.shape[0], x.len(), target.as_deref());
                if shape.iter().product::<usize>() != x.len() {
                    return Err(LstmError::shape("target_shape", &shape, &x.shape));
                }
                Tensor {
                    buf: x.buf.clone(),
                    offset: 0,
                    shape,
                    mask: None,
                }
            }
            Layout::ExpandDims(axis) => {
                let nd = x.shape.len() as i64 + 1;
                let a = if *axis < 0 { nd + axis } else { *axis };
                if a < 1 || a >= nd {
                    return Err(LstmError::invalid(
                        &what,
                        format!("axis {axis} is not a non-batch axis of a rank-{nd} result"),
                    ));
                }
                let mut shape = x.shape.clone();
                shape.insert(a as usize, 1);
                Tensor {
                    buf: x.buf.clone(),
                    offset: 0,
                    shape,
                    mask: None,
                }
            }
            Layout::Concat(_) | Layout::Identity => unreachable!("handled above"),
        };
        cx.mark(Phase::Layers);
        Ok(vec![out])
    }
}

/// `Concatenate(axis)`: each input copied into its slice of the output; the mask as Keras's
/// `Concatenate.compute_mask` (see `merged_mask`).
fn concat(
    cx: &mut PlanContext<'_, '_>,
    what: &str,
    inputs: &[Tensor],
    axis: i64,
) -> Result<Tensor> {
    let first = inputs
        .first()
        .ok_or_else(|| LstmError::invalid(what, "a merge of no tensors"))?;
    let nd = first.shape.len() as i64;
    let ax = if axis < 0 { nd + axis } else { axis };
    if ax < 1 || ax >= nd {
        return Err(LstmError::invalid(
            what,
            format!("axis {axis} is not a non-batch axis of a rank-{nd} tensor"),
        ));
    }
    let ax = ax as usize;
    let mut shape = first.shape.clone();
    shape[ax] = 0;
    for x in inputs {
        let same = x.shape.len() == first.shape.len()
            && x.shape
                .iter()
                .zip(&first.shape)
                .enumerate()
                .all(|(d, (a, b))| d == ax || a == b);
        if !same {
            return Err(LstmError::shape(
                format!("input of {what}"),
                &first.shape,
                &x.shape,
            ));
        }
        shape[ax] += x.shape[ax];
    }
    let n: usize = shape.iter().product();
    let out = cx.storage(what, (n * 4) as u64, wgpu::BufferUsages::COPY_SRC)?;
    let out_s = strides(&shape);
    let mut offset = 0;
    for x in inputs {
        let g = Gather {
            dims: x.shape.clone(),
            out_stride: out_s.clone(),
            out_base: offset * out_s[ax],
            in_stride: strides(&x.shape),
            in_base: 0,
            in_dims: x.shape.clone(),
            pad: vec![0; x.shape.len()],
            div: vec![1; x.shape.len()],
        };
        cx.gather(what, &x.buf, &out, &g)?;
        offset += x.shape[ax];
    }
    let mask = if ax == 1 && shape.len() >= 3 && inputs.iter().any(|t| t.mask.is_some()) {
        // Along time the masks are concatenated (a missing one all present), as the CPU twin.
        let (b, total) = (shape[0], shape[1]);
        let m = cx.storage(
            &format!("{what} mask"),
            (b * total * 4) as u64,
            wgpu::BufferUsages::empty(),
        )?;
        let mut offset = 0;
        for x in inputs {
            let t = x.shape[1];
            let part = match &x.mask {
                Some(m) => m.clone(),
                None => cx.ones(&format!("{what} mask"), b * t)?,
            };
            let g = Gather {
                dims: vec![b, t],
                out_stride: vec![total, 1],
                out_base: offset,
                in_stride: vec![t, 1],
                in_base: 0,
                in_dims: vec![b, t],
                pad: vec![0, 0],
                div: vec![1, 1],
            };
            cx.gather(what, &part, &m, &g)?;
            offset += t;
        }
        Some(m)
    } else {
        merged_mask(cx, what, inputs, true)?
    };
    cx.mark(Phase::Layers);
    Ok(Tensor {
        buf: out,
        offset: 0,
        shape,
        mask,
    })
}
