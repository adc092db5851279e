//! The plan builders of `Attention` / `AdditiveAttention` ([`AttentionStage`]) and `Dot`
//! ([`DotStage`]), through attention.wgsl (scores; masked softmax; weighted sum). CPU twins:
//! `Attention` in src/graph/attention.rs, `Dot` in src/graph/combine.rs.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{AttentionParams, ATTENTION_THREADS};
use crate::gpu::stats::Phase;

/// An attention layer: dot-product (`Attention`, `score_mode` dot or concat) or additive.
#[derive(Debug)]
pub(crate) struct AttentionStage {
    pub name: String,
    pub additive: bool,
    /// The scale: one value (Attention) or one per feature (AdditiveAttention).
    pub scale: Option<Vec<f32>>,
    pub scale_buf: Option<wgpu::Buffer>,
    pub concat_weight: Option<f32>,
}

/// One dispatch of attention.wgsl.
struct Pass<'a> {
    mode: u32,
    score: u32,
    items: usize,
    q: &'a wgpu::Buffer,
    k: &'a wgpu::Buffer,
    v: &'a wgpu::Buffer,
    mask: Option<&'a wgpu::Buffer>,
}

fn dispatch(
    cx: &mut PlanContext<'_, '_>,
    what: &str,
    ap: AttentionParams,
    pass: Pass<'_>,
    (scale, w, out): (Option<&wgpu::Buffer>, &wgpu::Buffer, &wgpu::Buffer),
) -> Result<()> {
    let ap = AttentionParams {
        has_mask: u32::from(pass.mask.is_some()),
        ..ap
    };
    let params = cx.uniform("attention parameters", bytemuck::bytes_of(&ap));
    let d = cx.dummy_vec4.clone();
    let bind = cx.bind(
        Kernel::Attention,
        &[
            &params,
            pass.q,
            pass.k,
            pass.v,
            scale.unwrap_or(&d),
            pass.mask.unwrap_or(&d),
            w,
            out,
        ],
    );
    let groups = cx.grid(what, pass.items, ATTENTION_THREADS)?;
    let pipeline = cx.kernels.pipeline(
        cx.device(),
        Kernel::Attention,
        &[
            ("MODE", f64::from(pass.mode)),
            ("SCORE", f64::from(pass.score)),
        ],
    )?;
    if pass.items > 0 {
        cx.dispatch(&pipeline, &bind, &[], groups);
    }
    Ok(())
}

impl GpuStage for AttentionStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let what = format!("layer {}", self.name);
        let (q, v, k) = crate::graph::query_value_key(args.inputs, &what)?;
        let (b, tq, dim) = q.dims3(&format!("query of {what}"))?;
        let (_, tv, vdim) = v.dims3(&format!("value of {what}"))?;
        if k.shape != [b, tv, dim] || v.shape[0] != b {
            return Err(LstmError::shape(
                format!("key of {what}"),
                &[b, tv, dim],
                &k.shape,
            ));
        }
        crate::graph::check_scale(self.scale.as_deref(), self.additive, dim, &self.name)?;
        loops::check(&what, loops::attention_iterations(dim, tv), cx.loop_cap)?;
        let score = if self.additive {
            2
        } else if self.concat_weight.is_some() {
            1
        } else {
            0
        };
        let ap = AttentionParams {
            batch: b as u32,
            tq: tq as u32,
            tv: tv as u32,
            dim: dim as u32,
            vdim: vdim as u32,
            q_b: (tq * dim) as u32,
            q_i: dim as u32,
            q_k: 1,
            k_b: (tv * dim) as u32,
            k_j: dim as u32,
            k_k: 1,
            has_scale: u32::from(self.scale.is_some()),
            causal: u32::from(args.flag("use_causal_mask")),
            has_mask: 0,
            scale: self.scale.as_ref().map_or(1.0, |s| s[0]),
            concat_weight: self.concat_weight.unwrap_or(1.0),
        };
        let w = cx.storage(
            &format!("{what} scores"),
            (b * tq * tv * 4) as u64,
            wgpu::BufferUsages::COPY_SRC,
        )?;
        let out = cx.storage(
            &what,
            (b * tq * vdim * 4) as u64,
            wgpu::BufferUsages::COPY_SRC,
        )?;
        let sb = self.scale_buf.as_ref();
        let pass = |mode, items, mask| Pass {
            mode,
            score,
            items,
            q: &q.buf,
            k: &k.buf,
            v: &v.buf,
            mask,
        };
        dispatch(cx, &what, ap, pass(0, b * tq * tv, None), (sb, &w, &out))?;
        dispatch(
            cx,
            &what,
            ap,
            pass(1, b * tq, v.mask.as_ref()),
            (sb, &w, &out),
        )?;
        dispatch(
            cx,
            &what,
            ap,
            pass(2, b * tq * vdim, q.mask.as_ref()),
            (sb, &w, &out),
        )?;
        cx.mark(Phase::Layers);
        let mut outs = vec![Tensor {
            buf: out,
            offset: 0,
            shape: vec![b, tq, vdim],
            mask: q.mask.clone(),
        }];
        if args.flag("return_attention_scores") {
            outs.push(Tensor {
                buf: w,
                offset: 0,
                shape: vec![b, tq, tv],
                mask: None,
            });
        }
        Ok(outs)
    }
}

/// Keras `Dot(axes, normalize)` on inputs of rank 2 or 3.
#[derive(Debug)]
pub(crate) struct DotStage {
    pub name: String,
    pub axes: (i64, i64),
    pub normalize: bool,
    /// Keras 2's normalization (the squared norm floored at 1e-12; Keras 3's factor is capped
    /// at 1e7, the squared norm floored at 1e-14).
    pub keras2_normalize: bool,
}

/// The `(kept size, kept stride, reduced stride, batch stride)` of `x` contracted over
/// `axis` (the other non-batch axis kept, or none for rank 2).
fn arrange(x: &Tensor, axis: i64, what: &str) -> Result<(usize, usize, usize, usize, usize)> {
    let nd = x.shape.len();
    let a = if axis < 0 { axis + nd as i64 } else { axis };
    if a <= 0 || a as usize >= nd {
        return Err(LstmError::invalid(
            format!("axes of {what}"),
            format!("{a} is not a non-batch axis of a rank-{nd} input"),
        ));
    }
    let a = a as usize;
    match x.shape[..] {
        [_, n] => Ok((1, 0, 1, n, n)),
        [_, p, r] => {
            if a == 1 {
                // reduce over p (stride r), keep r (stride 1)
                Ok((r, 1, r, p * r, p))
            } else {
                Ok((p, r, 1, p * r, r))
            }
        }
        _ => Err(LstmError::UnsupportedOnPath {
            what: format!("{what} on rank-{nd} inputs"),
            path: "gpu".into(),
            hint: "the GPU's Dot takes inputs of rank 2 or 3; run this model on the CPU path"
                .into(),
        }),
    }
}

impl GpuStage for DotStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let what = format!("layer {}", self.name);
        let [x, y] = args.inputs else {
            return Err(LstmError::invalid(what, "Dot takes 2 inputs"));
        };
        let (m, xi, xk, xb, kx) = arrange(x, self.axes.0, &what)?;
        let (n, yj, yk, yb, ky) = arrange(y, self.axes.1, &what)?;
        let b = x.shape[0];
        if y.shape[0] != b || kx != ky {
            return Err(LstmError::shape(
                format!("second input of {what}"),
                &[b, kx],
                &[y.shape[0], ky],
            ));
        }
        loops::check(&what, loops::attention_iterations(kx, 0), cx.loop_cap)?;
        let ap = AttentionParams {
            batch: b as u32,
            tq: m as u32,
            tv: n as u32,
            dim: kx as u32,
            vdim: 0,
            q_b: xb as u32,
            q_i: xi as u32,
            q_k: xk as u32,
            k_b: yb as u32,
            k_j: yj as u32,
            k_k: yk as u32,
            has_scale: u32::from(self.normalize),
            causal: 0,
            has_mask: 0,
            // (Dot's scale is the floor of the squared norms it normalizes by)
            scale: if self.keras2_normalize { 1e-12 } else { 1e-14 },
            concat_weight: 1.0,
        };
        let out = cx.storage(&what, (b * m * n * 4) as u64, wgpu::BufferUsages::COPY_SRC)?;
        let d = cx.dummy.clone();
        let pass = Pass {
            mode: 0,
            score: 3,
            items: b * m * n,
            q: &x.buf,
            k: &y.buf,
            v: &x.buf,
            mask: None,
        };
        dispatch(cx, &what, ap, pass, (None, &out, &d))?;
        cx.mark(Phase::Layers);
        let mut shape = vec![b];
        if x.shape.len() == 3 {
            shape.push(m);
        }
        if y.shape.len() == 3 {
            shape.push(n);
        }
        if shape.len() == 1 {
            shape.push(1);
        }
        Ok(vec![Tensor {
            buf: out,
            offset: 0,
            shape,
            mask: None,
        }])
    }
}
