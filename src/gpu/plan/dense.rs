//! The plan builder of Keras `Dense`: the product (projection.wgsl, as an LSTM's input
//! projection) and the activation (dense.wgsl) over every row. CPU twin: `dense_forward` in
//! src/model.rs.

use super::{
    bind_buffers, dispatch_limit, grid, params_binding, projection_bind_group, ExtraPlan,
    PlanContext,
};
use crate::activation::Activation;
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{
    DenseParams, ProjParams, DENSE_THREADS, PROJECTION_COLUMNS, PROJECTION_ROWS,
};

/// Plans Dense layer `i` on `input` with `t_rows` rows per batch row; returns its dispatches
/// and its output.
pub(in crate::gpu) fn plan_dense(
    cx: &mut PlanContext<'_, '_>,
    i: usize,
    input: &(wgpu::Buffer, usize),
    t_rows: usize,
) -> Result<(ExtraPlan, (wgpu::Buffer, usize))> {
    let PlanContext {
        net,
        device,
        ref mut alloc,
        batch,
        max_groups,
        ref dummy,
        ref dummy_vec4,
        loop_cap,
        ..
    } = *cx;
    let storage = wgpu::BufferUsages::STORAGE;
    let dw = &net.denses[i];
    if input.1 != dw.inputs {
        return Err(LstmError::shape(
            "Dense kernel",
            &[input.1, dw.units],
            &[dw.inputs, dw.units],
        ));
    }
    let what = format!("Dense layer ({} inputs, {} units)", dw.inputs, dw.units);
    loops::check(
        &what,
        loops::projection_iterations(dw.inputs)
            .max(loops::dense_iterations(dw.units, dw.activation.is_none())),
        loop_cap,
    )?;
    let rows = batch * t_rows;
    let out_size = (rows * dw.units * 4) as u64;
    net.check_binding("Dense output", out_size)?;
    let out = alloc.buffer("dense", out_size, storage | wgpu::BufferUsages::COPY_SRC);
    let pp = ProjParams {
        rows: rows as u32,
        k: dw.inputs as u32,
        n: dw.units as u32,
        tc: t_rows as u32,
        seq_len: t_rows as u32,
        t_lo: 0,
        has_bias: u32::from(dw.bias.is_some()),
        _pad: 0,
    };
    let params = alloc.uniform("dense parameters", bytemuck::bytes_of(&pp));
    let uniform = params_binding(&params);
    let bind = projection_bind_group(
        device,
        net.kernels.layout(Kernel::Projection),
        "dense",
        uniform,
        (&input.0, dw.inputs),
        &dw.kernel,
        dw.bias.as_ref(),
        &out,
        (dummy, dummy_vec4),
    );
    let (gx, gy) = (
        dw.units.div_ceil(PROJECTION_COLUMNS),
        rows.div_ceil(PROJECTION_ROWS),
    );
    if gx > max_groups || gy > max_groups {
        return Err(dispatch_limit(&what, gx.max(gy), max_groups));
    }
    let mut dispatches = vec![(
        net.kernels.pipeline(device, Kernel::Projection, &[])?,
        bind,
        vec![0],
        gx as u32,
        gy as u32,
    )];
    if dw.activation != Some(Activation::Linear) {
        let dp = DenseParams {
            rows: rows as u32,
            n: dw.units as u32,
            ..bytemuck::Zeroable::zeroed()
        };
        let act_params = alloc.uniform("dense activation parameters", bytemuck::bytes_of(&dp));
        let act_bind = bind_buffers(cx, Kernel::Dense, &[&act_params, &out]);
        let pipeline = net.kernels.dense(device, dw.activation)?;
        let (ax, ay) = grid(&what, rows, DENSE_THREADS, max_groups)?;
        dispatches.push((pipeline, act_bind, vec![], ax, ay));
    }
    Ok((ExtraPlan { dispatches }, (out, dw.units)))
}
