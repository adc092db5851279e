//! The plan builder of Keras `Masking`: the mask of each timestep and the masked input, for
//! the recurrent layers after it. Kernel: mask.wgsl; CPU twin: the `Masking` arm of
//! `KerasModel::predict`.

use super::{GpuStage, Output, PlanContext, Planned, Tensor};
use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{MaskParams, MASK_THREADS};
use crate::gpu::stats::Phase;

/// Keras `Masking(mask_value)`.
#[derive(Debug)]
pub(in crate::gpu) struct MaskStage {
    pub(in crate::gpu) value: f32,
}

impl GpuStage for MaskStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, input: &Tensor) -> Result<Planned> {
        let (batch, steps, width) = (cx.batch, cx.steps, input.width);
        let rows = input.rows(steps);
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
        let mp = MaskParams {
            batch: batch as u32,
            steps: rows as u32,
            width: width as u32,
            value: self.value,
            ..bytemuck::Zeroable::zeroed()
        };
        let params = cx.uniform("mask parameters", bytemuck::bytes_of(&mp));
        let mask = cx.mask.clone();
        let bind = cx.bind(Kernel::Mask, &[&params, &input.buf, &mask, &out]);
        let groups = cx.grid("Masking layer", batch * rows, MASK_THREADS)?;
        let pipeline = cx.pipeline(Kernel::Mask)?;
        cx.dispatch(&pipeline, &bind, &[], groups);
        cx.mark(Phase::Layers);
        let next = Tensor {
            buf: out,
            width,
            sequence: input.sequence,
            masked: true,
        };
        let outputs = vec![Output::tensor(&next, batch, steps)];
        Ok(Planned { next, outputs })
    }
}
