//! The plan builders of the value-by-value layers: [`UnaryStage`] (unary.wgsl: Activation,
//! ReLU/LeakyReLU/ELU/Softmax/PReLU, the `NotEqual`, `Any`, `ZerosLike` op layers) and
//! [`BinaryStage`] (binary.wgsl: Add, Subtract, Multiply, Average, Maximum, Minimum,
//! LogicalOr/And, broadcasting), and the merged mask of a merge layer. CPU twins: `Activate`,
//! `Leaky`, `PRelu` in src/graph/activations.rs; `FillLike` in src/graph/core.rs; `Merge`,
//! `NotEqual`, `AnyOp` in src/graph/combine.rs.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::activation::Activation;
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{BinaryParams, UnaryParams, BINARY_THREADS, UNARY_THREADS};
use crate::gpu::stats::Phase;
use ndarray::{ArrayD, IxDyn};

/// What a [`UnaryStage`] computes (the `MODE` of unary.wgsl).
#[derive(Debug, Clone)]
pub(crate) enum UnaryOp {
    /// An element-wise activation.
    Act(Activation),
    /// Softmax over the last axis.
    Softmax,
    /// `ReLU(negative_slope, threshold, max_value)` / `LeakyReLU`.
    Leaky {
        slope: f32,
        threshold: f32,
        max: Option<f32>,
    },
    /// `PReLU` with its alpha (the input's shape after the batch axis, 1 on shared axes).
    PRelu(ArrayD<f32>),
    /// `NotEqual(x, scalar)` (the op layer Keras saves for a functional `Masking`).
    NotEqual,
    /// `ZerosLike` / `OnesLike` (the op layers Keras saves for merged masks): the value.
    Fill(f32),
    /// `Any(axis)` over the last axis (`axis` -1 or the last).
    Any { axis: i64, keepdims: bool },
}

impl UnaryOp {
    fn mode(&self) -> u32 {
        match self {
            UnaryOp::Act(_) => 0,
            UnaryOp::Leaky { .. } => 1,
            UnaryOp::PRelu(_) => 2,
            UnaryOp::NotEqual => 3,
            UnaryOp::Fill(_) => 4,
            UnaryOp::Softmax => 6,
            UnaryOp::Any { .. } => 7,
        }
    }
}

/// A layer of one input computed value by value or row by row (see [`UnaryOp`]).
#[derive(Debug)]
pub(crate) struct UnaryStage {
    pub name: String,
    pub op: UnaryOp,
}

impl PlanContext<'_, '_> {
    /// Appends one dispatch of unary.wgsl in `mode` over `x` (`count` values or rows of
    /// `up.width`) into `out`.
    pub(crate) fn unary(
        &mut self,
        what: &str,
        (mode, activation): (u32, Activation),
        up: UnaryParams,
        x: &wgpu::Buffer,
        alpha: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        if up.count == 0 {
            return Ok(());
        }
        let params = self.uniform("unary parameters", bytemuck::bytes_of(&up));
        let alpha = alpha.unwrap_or(&self.dummy_vec4).clone();
        let bind = self.bind(Kernel::Unary, &[&params, x, &alpha, out]);
        let groups = self.grid(what, up.count as usize, UNARY_THREADS)?;
        let pipeline = self.kernels.pipeline(
            self.device(),
            Kernel::Unary,
            &[
                ("MODE", f64::from(mode)),
                ("ACTIVATION", f64::from(activation.id())),
            ],
        )?;
        self.dispatch(&pipeline, &bind, &[], groups);
        Ok(())
    }

    /// A `[B, T]` mask of ones (every step present).
    pub(crate) fn ones(&mut self, what: &str, n: usize) -> Result<wgpu::Buffer> {
        let out = self.storage(what, (n * 4) as u64, wgpu::BufferUsages::empty())?;
        let up = UnaryParams {
            count: n as u32,
            a: 1.0,
            ..bytemuck::Zeroable::zeroed()
        };
        let dummy = self.dummy.clone();
        self.unary(what, (4, Activation::Linear), up, &dummy, None, &out)?;
        Ok(out)
    }

    /// `out = a (op) b` value by value over `n` values (binary.wgsl).
    pub(crate) fn binary(
        &mut self,
        what: &str,
        op: BinaryOp,
        n: usize,
        (a, b): (&wgpu::Buffer, &wgpu::Buffer),
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let bp = BinaryParams {
            count: n as u32,
            ..bytemuck::Zeroable::zeroed()
        };
        let params = self.uniform("binary parameters", bytemuck::bytes_of(&bp));
        let bind = self.bind(Kernel::Binary, &[&params, a, b, out]);
        let groups = self.grid(what, n, BINARY_THREADS)?;
        let pipeline = self.kernels.pipeline(
            self.device(),
            Kernel::Binary,
            &[("MODE", f64::from(op as u32))],
        )?;
        self.dispatch(&pipeline, &bind, &[], groups);
        Ok(())
    }
}

impl GpuStage for UnaryStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let x = args.one(&self.name)?;
        let what = format!("layer {}", self.name);
        let n = x.len();
        let width = x.width();
        let mut up = UnaryParams {
            count: n as u32,
            width: width as u32,
            period: 1,
            ..bytemuck::Zeroable::zeroed()
        };
        let mut shape = x.shape.clone();
        let mut mask = x.mask.clone();
        let mut alpha = None;
        let mut activation = Activation::Linear;
        match &self.op {
            UnaryOp::Act(a) => activation = *a,
            UnaryOp::Softmax => up.count = x.rows() as u32,
            UnaryOp::Leaky {
                slope,
                threshold,
                max,
            } => {
                up.a = *slope;
                up.b = *threshold;
                up.has_max = u32::from(max.is_some());
                up.c = max.unwrap_or(0.0);
            }
            UnaryOp::PRelu(a) => {
                let mut full = vec![1];
                full.extend(a.shape());
                let per_sample: Vec<usize> = x.shape[1..].to_vec();
                let broadcast = a
                    .view()
                    .into_shape_with_order(IxDyn(&full))
                    .ok()
                    .and_then(|v| {
                        let mut s = vec![1];
                        s.extend(&per_sample);
                        v.broadcast(IxDyn(&s))
                            .map(|b| b.iter().copied().collect::<Vec<f32>>())
                    })
                    .ok_or_else(|| {
                        LstmError::shape(format!("{}/alpha", self.name), &per_sample, a.shape())
                    })?;
                up.period = broadcast.len().max(1) as u32;
                alpha = Some(cx.constant("PReLU alpha", &broadcast)?);
            }
            UnaryOp::NotEqual => {
                up.a = *args.scalars.first().ok_or_else(|| {
                    LstmError::invalid("NotEqual", "compares a tensor with a scalar")
                })? as f32;
                mask = None;
            }
            UnaryOp::Fill(v) => {
                up.a = *v;
                mask = None;
            }
            UnaryOp::Any { axis, keepdims } => {
                let nd = x.shape.len() as i64;
                if *axis != -1 && *axis != nd - 1 {
                    return Err(LstmError::UnsupportedOnPath {
                        what: format!("{what}: Any over axis {axis} of a rank-{nd} tensor"),
                        path: "gpu".into(),
                        hint: "the GPU reduces the last axis only; run this model on the CPU \
                               path"
                            .into(),
                    });
                }
                up.count = x.rows() as u32;
                if *keepdims {
                    *shape.last_mut().expect("at least 1-D") = 1;
                } else {
                    shape.pop();
                }
                mask = None;
            }
        }
        if matches!(self.op, UnaryOp::Softmax | UnaryOp::Any { .. }) {
            loops::check(&what, loops::unary_row_iterations(width), cx.loop_cap)?;
        }
        let out_len: usize = shape.iter().product();
        let out = cx.storage(&what, (out_len * 4) as u64, wgpu::BufferUsages::COPY_SRC)?;
        cx.unary(
            &what,
            (self.op.mode(), activation),
            up,
            &x.buf,
            alpha.as_ref(),
            &out,
        )?;
        cx.mark(Phase::Layers);
        Ok(vec![Tensor {
            buf: out,
            offset: 0,
            shape,
            mask,
        }])
    }
}

/// The operation of a [`BinaryStage`] (the `MODE` of binary.wgsl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add = 0,
    Subtract = 1,
    Multiply = 2,
    Maximum = 3,
    Minimum = 4,
    Or = 5,
    And = 6,
    Divide = 7,
}

/// A merge layer of tensors of one shape: `Add`, `Subtract`, `Multiply`, `Maximum`,
/// `Minimum`, or `Average` (a sum, then divided by the count).
#[derive(Debug)]
pub(crate) struct BinaryStage {
    pub name: String,
    pub op: BinaryOp,
    pub average: bool,
}

impl GpuStage for BinaryStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let what = format!("layer {}", self.name);
        if args.inputs.is_empty() {
            return Err(LstmError::invalid(&what, "a merge of no tensors"));
        }
        // Operands of other shapes broadcast as numpy's (the op layers' masks do).
        let shape = broadcast_shape(args.inputs.iter().map(|t| t.shape.as_slice()), &what)?;
        let inputs: Vec<Tensor> = args
            .inputs
            .iter()
            .map(|t| broadcast_to(cx, &what, t, &shape))
            .collect::<Result<_>>()?;
        let first = &inputs[0];
        if self.op == BinaryOp::Subtract && args.inputs.len() != 2 {
            return Err(LstmError::invalid(&what, "Subtract takes exactly 2 inputs"));
        }
        let n = first.len();
        let mut acc = first.buf.clone();
        for (k, v) in inputs[1..].iter().enumerate() {
            // ping-pong between two buffers (a dispatch never reads what it writes)
            let out = cx.storage(
                &format!("{what} ({})", k % 2),
                (n * 4) as u64,
                wgpu::BufferUsages::COPY_SRC,
            )?;
            cx.binary(&what, self.op, n, (&acc, &v.buf), &out)?;
            acc = out;
        }
        if self.average {
            let out = cx.storage(
                &format!("{what} (mean)"),
                (n * 4) as u64,
                wgpu::BufferUsages::COPY_SRC,
            )?;
            let up = UnaryParams {
                count: n as u32,
                a: args.inputs.len() as f32,
                ..bytemuck::Zeroable::zeroed()
            };
            cx.unary(&what, (5, Activation::Linear), up, &acc, None, &out)?;
            acc = out;
        } else if args.inputs.len() == 1 {
            let out = cx.gathered(
                &what,
                &acc,
                first.shape.clone(),
                &super::gather::Gather::copy(&first.shape),
            )?;
            acc = out.buf;
        }
        let mask = if matches!(self.op, BinaryOp::Or | BinaryOp::And) {
            None // (op layers, not layers: no masks)
        } else {
            merged_mask(cx, &what, &inputs, false)?
        };
        cx.mark(Phase::Layers);
        Ok(vec![Tensor {
            buf: acc,
            offset: 0,
            shape: first.shape.clone(),
            mask,
        }])
    }
}

/// The numpy broadcast of `shapes` (right-aligned; 1 stretches), or an error naming `what`.
pub(crate) fn broadcast_shape<'s>(
    shapes: impl Iterator<Item = &'s [usize]>,
    what: &str,
) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = Vec::new();
    for s in shapes {
        if s.len() > out.len() {
            let mut grown = vec![1; s.len() - out.len()];
            grown.extend(&out);
            out = grown;
        }
        let off = out.len() - s.len();
        for (k, &d) in s.iter().enumerate() {
            let o = &mut out[off + k];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(LstmError::shape(format!("input of {what}"), &out, s));
            }
        }
    }
    Ok(out)
}

/// `t` as a tensor of `shape` (a copy with stride 0 on stretched axes), or `t` itself when
/// it has that shape.
fn broadcast_to(
    cx: &mut PlanContext<'_, '_>,
    what: &str,
    t: &Tensor,
    shape: &[usize],
) -> Result<Tensor> {
    if t.shape == shape {
        return Ok(t.clone());
    }
    let n = shape.len();
    let mut src = vec![1; n - t.shape.len()];
    src.extend(&t.shape);
    let s = super::gather::strides(&src);
    let g = super::gather::Gather {
        dims: shape.to_vec(),
        out_stride: super::gather::strides(shape),
        out_base: 0,
        in_stride: (0..n).map(|d| if src[d] == 1 { 0 } else { s[d] }).collect(),
        in_base: 0,
        in_dims: (0..n)
            .map(|d| {
                if src[d] == 1 {
                    usize::MAX >> 33
                } else {
                    src[d]
                }
            })
            .collect(),
        pad: vec![0; n],
        div: vec![1; n],
    };
    let mut out = cx.gathered(what, &t.buf, shape.to_vec(), &g)?;
    out.mask = t.mask.clone();
    Ok(out)
}

/// The mask of a merge layer, as its CPU twin `Merge` computes it: none when no input has
/// one; for `Concatenate` all-present when some input has none, else the OR of the masks;
/// for the other merges none unless every input has one, then their OR.
pub(crate) fn merged_mask(
    cx: &mut PlanContext<'_, '_>,
    what: &str,
    inputs: &[Tensor],
    concat: bool,
) -> Result<Option<wgpu::Buffer>> {
    let present: Vec<&Tensor> = inputs.iter().filter(|t| t.mask.is_some()).collect();
    let Some(m0) = present.first() else {
        return Ok(None);
    };
    let dims = |t: &Tensor| (t.shape[0], t.shape.get(1).copied().unwrap_or(1));
    for t in &present {
        if dims(t) != dims(m0) {
            let (b, s) = dims(m0);
            let (b2, s2) = dims(t);
            return Err(LstmError::shape(
                format!("mask reaching {what}"),
                &[b, s],
                &[b2, s2],
            ));
        }
    }
    let (b, t) = dims(m0);
    if present.len() < inputs.len() {
        if !concat {
            return Ok(None);
        }
        return cx.ones(&format!("{what} mask"), b * t).map(Some);
    }
    let mut acc = m0.mask.clone().expect("present");
    for (k, m) in present[1..].iter().enumerate() {
        let out = cx.storage(
            &format!("{what} mask ({})", k % 2),
            (b * t * 4) as u64,
            wgpu::BufferUsages::empty(),
        )?;
        let mb = m.mask.as_ref().expect("present");
        cx.binary(what, BinaryOp::Maximum, b * t, (&acc, mb), &out)?;
        acc = out;
    }
    Ok(Some(acc))
}
