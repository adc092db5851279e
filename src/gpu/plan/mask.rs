//! The plan builder of Keras `Masking`: the mask of each timestep and the masked input, for
//! the recurrent layers after it. Kernel: mask.wgsl; CPU twin: the `Masking` arm of
//! `KerasModel::predict`.

use super::{bind_buffers, grid, ExtraPlan, PlanContext};
use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{MaskParams, MASK_THREADS};

/// Plans a Masking layer of `value` on `input`; returns its dispatches and its output.
pub(in crate::gpu) fn plan_mask(
    cx: &mut PlanContext<'_, '_>,
    value: f32,
    input: &(wgpu::Buffer, usize),
) -> Result<(ExtraPlan, (wgpu::Buffer, usize))> {
    let PlanContext {
        net,
        device,
        ref mut alloc,
        batch,
        steps,
        max_groups,
        ref mask,
        loop_cap,
        ..
    } = *cx;
    let storage = wgpu::BufferUsages::STORAGE;
    let width = input.1;
    net.check_binding("Masking output", (batch * steps * width * 4) as u64)?;
    loops::check(
        &format!("Masking layer ({width} features)"),
        loops::mask_iterations(width),
        loop_cap,
    )?;
    let out = alloc.buffer(
        "masked",
        (batch * steps * width * 4) as u64,
        storage | wgpu::BufferUsages::COPY_SRC,
    );
    let mp = MaskParams {
        batch: batch as u32,
        steps: steps as u32,
        width: width as u32,
        value,
        ..bytemuck::Zeroable::zeroed()
    };
    let params = alloc.uniform("mask parameters", bytemuck::bytes_of(&mp));
    let bind = bind_buffers(cx, Kernel::Mask, &[&params, &input.0, mask, &out]);
    let (gx, gy) = grid("Masking layer", batch * steps, MASK_THREADS, max_groups)?;
    let extra = ExtraPlan {
        dispatches: vec![(
            net.kernels.pipeline(device, Kernel::Mask, &[])?,
            bind,
            vec![],
            gx,
            gy,
        )],
    };
    Ok((extra, (out, width)))
}
