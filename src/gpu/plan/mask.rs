//! The plan builder of Keras `Masking`: the mask of each timestep and the masked input, for
//! the recurrent layers after it. Kernel: mask.wgsl; CPU twin: the `Masking` arm of
//! `KerasModel::predict`.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{MaskParams, MASK_THREADS};
use crate::gpu::stats::Phase;

/// Keras `Masking(mask_value)`.
#[derive(Debug)]
pub(crate) struct MaskStage {
    pub(crate) value: f32,
}

impl GpuStage for MaskStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let input = args.one("Masking")?;
        let (batch, rows, width) = input.dims3("input of Masking")?;
        loops::check(
            &format!("Masking layer ({width} features)"),
            loops::mask_iterations(width),
            cx.loop_cap,
        )?;
        let out = cx.storage(
            "Masking output",
            (batch * rows * width * 4) as u64,
            wgpu::BufferUsages::COPY_SRC,
        )?;
        let mask = cx.storage(
            "Masking mask",
            (batch * rows * 4) as u64,
            wgpu::BufferUsages::empty(),
        )?;
        let mp = MaskParams {
            batch: batch as u32,
            steps: rows as u32,
            width: width as u32,
            value: self.value,
            ..bytemuck::Zeroable::zeroed()
        };
        let params = cx.uniform("mask parameters", bytemuck::bytes_of(&mp));
        let bind = cx.bind(Kernel::Mask, &[&params, &input.buf, &mask, &out]);
        let groups = cx.grid("Masking layer", batch * rows, MASK_THREADS)?;
        let pipeline = cx.pipeline(Kernel::Mask)?;
        cx.dispatch(&pipeline, &bind, &[], groups);
        cx.mark(Phase::Layers);
        Ok(vec![Tensor {
            buf: out,
            offset: 0,
            shape: input.shape.clone(),
            mask: Some(mask),
        }])
    }
}
