//! The plan builder of Keras `MultiHeadAttention`: its four projections (projection.wgsl, as
//! Dense layers over the rows) and the attention of every head (mha.wgsl, one thread per
//! batch row, head and query step) in the one plan. CPU twin: `graph::mha::Mha`.

use super::{Args, DenseStage, GpuStage, PlanContext, Tensor};
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{MhaParams, MHA_THREADS};
use crate::gpu::stats::Phase;
use crate::gpu::Uploader;

#[derive(Debug)]
pub(crate) struct MhaStage {
    name: String,
    heads: usize,
    key_dim: usize,
    value_dim: usize,
    dropout: bool,
    query: DenseStage,
    key: DenseStage,
    value: DenseStage,
    output: DenseStage,
}

impl MhaStage {
    /// Uploads the layer's projections: its stage.
    pub(crate) fn upload(
        up: &mut Uploader<'_>,
        op: &crate::graph::MhaOp,
    ) -> Result<Box<dyn GpuStage>> {
        let dense = |up: &mut Uploader<'_>, p: &crate::graph::MhaProjection, part: &str| {
            let bias = p
                .bias
                .as_ref()
                .map(|b| ndarray::ArrayView1::from(b.as_slice()));
            DenseStage::upload(
                up,
                &format!("{}/{part}", op.name),
                p.kernel.view(),
                bias,
                Some(crate::activation::Activation::Linear),
            )
        };
        Ok(Box::new(MhaStage {
            name: op.name.clone(),
            heads: op.heads,
            key_dim: op.key_dim,
            value_dim: op.value_dim,
            dropout: op.dropout,
            query: dense(up, &op.query, "query")?,
            key: dense(up, &op.key, "key")?,
            value: dense(up, &op.value, "value")?,
            output: dense(up, &op.output, "attention_output")?,
        }))
    }
}

fn project(
    cx: &mut PlanContext<'_, '_>,
    stage: &DenseStage,
    x: &Tensor,
    args: &Args<'_>,
) -> Result<Tensor> {
    let inputs = [x.clone()];
    let mut out = stage.plan(
        cx,
        &Args {
            inputs: &inputs,
            states: &[],
            mask: None,
            scalars: &[],
            kwargs: args.kwargs,
        },
    )?;
    Ok(out.remove(0))
}

impl GpuStage for MhaStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let what = format!("layer {}", self.name);
        let (q, v, k) = match args.inputs {
            [q, v] => (q, v, v),
            [q, v, k] => (q, v, k),
            other => {
                return Err(LstmError::invalid(
                    &what,
                    format!(
                        "takes query, value and an optional key, got {} tensors",
                        other.len()
                    ),
                ))
            }
        };
        for (t, part) in [(q, "query"), (v, "value"), (k, "key")] {
            if t.shape.len() != 3 {
                return Err(LstmError::shape(
                    format!("{part} of {what}"),
                    &[0, 0, 0],
                    &t.shape,
                ));
            }
        }
        let (b, tq, tv) = (q.shape[0], q.shape[1], v.shape[1]);
        if k.shape[..2] != v.shape[..2] || v.shape[0] != b {
            return Err(LstmError::shape(
                format!("key of {what}"),
                &v.shape[..2],
                &k.shape[..2],
            ));
        }
        let (n, h, hv) = (self.heads, self.key_dim, self.value_dim);
        loops::check(&what, loops::mha_iterations(h, hv, tv), cx.loop_cap)?;
        let pq = project(cx, &self.query, q, args)?;
        let pk = project(cx, &self.key, k, args)?;
        let pv = project(cx, &self.value, v, args)?;
        let return_scores = args.flag("return_attention_scores");
        let causal = args.flag("use_causal_mask");
        let scores_path = return_scores || self.dropout;
        let masked = q.mask.is_some() || v.mask.is_some() || k.mask.is_some() || causal;
        let params = MhaParams {
            batch: b as u32,
            tq: tq as u32,
            tv: tv as u32,
            heads: n as u32,
            key_dim: h as u32,
            value_dim: hv as u32,
            causal: u32::from(causal),
            has_qmask: u32::from(q.mask.is_some()),
            has_vmask: u32::from(v.mask.is_some()),
            has_kmask: u32::from(k.mask.is_some()),
            scores_path: u32::from(scores_path),
            masked: u32::from(masked),
            scale: (1.0 / (h as f64).sqrt()) as f32,
            fill: if scores_path {
                -1e9
            } else {
                -0.7 * 3.389_53e38
            },
            _pad0: 0,
            _pad1: 0,
        };
        let scores = cx.storage(
            &format!("{what} scores"),
            (4 * b * n * tq * tv).max(4) as u64,
            wgpu::BufferUsages::empty(),
        )?;
        let context = cx.storage(
            &format!("{what} context"),
            (4 * b * tq * n * hv).max(4) as u64,
            wgpu::BufferUsages::empty(),
        )?;
        let uniform = cx.uniform(&what, bytemuck::bytes_of(&params));
        let dummy = cx.dummy.clone();
        let mask = |t: &Tensor| t.mask.clone().unwrap_or_else(|| dummy.clone());
        let (qm, vm, km) = (mask(q), mask(v), mask(k));
        let bind = cx.bind(
            Kernel::Mha,
            &[
                &uniform, &pq.buf, &pk.buf, &pv.buf, &qm, &vm, &km, &scores, &context,
            ],
        );
        let pipeline = cx.pipeline(Kernel::Mha)?;
        let groups = cx.grid(&what, b * n * tq, MHA_THREADS)?;
        cx.dispatch(&pipeline, &bind, &[], groups);
        cx.mark(Phase::Layers);
        let context = Tensor {
            buf: context,
            offset: 0,
            shape: vec![b, tq, n * hv],
            mask: None,
        };
        let mut out = project(cx, &self.output, &context, args)?;
        out.mask = q.mask.clone();
        let mut outs = vec![out];
        if return_scores {
            outs.push(Tensor {
                buf: scores,
                offset: 0,
                shape: vec![b, n, tq, tv],
                mask: None,
            });
        }
        Ok(outs)
    }
}
