//! The plan builder of Keras `Embedding` (embedding.wgsl): a row of the table per token id,
//! and the mask `id != 0` with `mask_zero`. CPU twin: `Embedding` in src/graph/core.rs.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::params::{EmbeddingParams, EMBEDDING_THREADS};
use crate::gpu::stats::Phase;

/// An Embedding layer's table on the GPU (`[vocab, dim]`, row-major).
#[derive(Debug)]
pub(crate) struct EmbeddingStage {
    pub name: String,
    pub table: wgpu::Buffer,
    pub vocab: usize,
    pub dim: usize,
    pub mask_zero: bool,
}

impl GpuStage for EmbeddingStage {
    fn vocabulary(&self) -> Option<usize> {
        Some(self.vocab)
    }

    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let ids = args.one(&self.name)?;
        let what = format!("layer {}", self.name);
        let tokens = ids.len();
        let count = tokens * self.dim;
        if u32::try_from(count).is_err() {
            return Err(LstmError::invalid(
                &what,
                format!("{count} outputs exceed a 32-bit index"),
            ));
        }
        let out = cx.storage(&what, (count * 4) as u64, wgpu::BufferUsages::COPY_SRC)?;
        let mask = if self.mask_zero {
            if ids.shape.len() != 2 {
                return Err(LstmError::shape(
                    format!("input of {what}"),
                    &[0, 0],
                    &ids.shape,
                ));
            }
            Some(cx.storage(
                &format!("{what} mask"),
                (tokens * 4) as u64,
                wgpu::BufferUsages::empty(),
            )?)
        } else {
            None
        };
        let ep = EmbeddingParams {
            count: count as u32,
            dim: self.dim as u32,
            vocab: self.vocab as u32,
            mask_zero: u32::from(self.mask_zero),
            ..bytemuck::Zeroable::zeroed()
        };
        let params = cx.uniform("embedding parameters", bytemuck::bytes_of(&ep));
        let dummy = cx.dummy.clone();
        let bind = cx.bind(
            Kernel::Embedding,
            &[
                &params,
                &ids.buf,
                &self.table,
                &out,
                mask.as_ref().unwrap_or(&dummy),
            ],
        );
        let groups = cx.grid(&what, count, EMBEDDING_THREADS)?;
        let pipeline = cx.pipeline(Kernel::Embedding)?;
        cx.dispatch(&pipeline, &bind, &[], groups);
        cx.mark(Phase::Layers);
        let mut shape = ids.shape.clone();
        shape.push(self.dim);
        Ok(vec![Tensor {
            buf: out,
            offset: 0,
            shape,
            mask,
        }])
    }
}
