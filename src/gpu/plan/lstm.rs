//! The plan builder of one LSTM direction: its input projection (in chunks of timesteps that
//! fit the binding limit) and its recurrent dispatches (one per timestep, or runs of timesteps
//! of the whole-sequence kernel within the driver's loop limit). Kernels: projection.wgsl,
//! step.wgsl, sequence.wgsl; CPU twin: `cpu::reference::run`.

use super::{
    dispatch_limit, entry, limit_error, params_binding, projection_bind_group, ChunkPlan, DirPlan,
    PlanContext,
};
use crate::error::Result;
use crate::gpu::kernels::{Kernel, StepKey};
use crate::gpu::loops;
use crate::gpu::params::{
    ProjParams, SeqParams, StepParams, PERSISTENT_MAX_STATE, PROJECTION_COLUMNS, PROJECTION_ROWS,
    STEP_ROWS, STEP_THREADS,
};

/// Plans direction `d`, reading `input` (a buffer and its width); `mask_on` says whether a
/// mask applies to it.
pub(in crate::gpu) fn plan_direction(
    cx: &mut PlanContext<'_, '_>,
    d: usize,
    input: &(wgpu::Buffer, usize),
    mask_on: bool,
) -> Result<DirPlan> {
    let PlanContext {
        net,
        device,
        ref mut alloc,
        states,
        batch,
        steps,
        choice_batch,
        max_groups,
        stride,
        ref mask,
        ref dummy,
        ref dummy_vec4,
        loop_cap,
        ..
    } = *cx;
    let storage = wgpu::BufferUsages::STORAGE;
    let w = &net.dirs[d];
    let h = w.config.units;
    let n = 4 * h;
    // Projection chunks: as many timesteps as fit the binding limit and the dispatch limit
    // (a workgroup covers PROJECTION_ROWS rows and PROJECTION_COLUMNS columns).
    let per_step = (batch * n * 4) as u64;
    let by_bytes = (net.max_binding() / per_step) as usize;
    let by_groups = max_groups * PROJECTION_ROWS / batch;
    let tc_max = by_bytes.min(by_groups).min(steps);
    if by_bytes == 0 {
        return Err(limit_error(
            &format!("one timestep's input projection of {}", w.config.name),
            per_step,
            net.max_binding(),
            "max_storage_buffer_binding_size",
        ));
    }
    if tc_max == 0 {
        let groups = batch.div_ceil(PROJECTION_ROWS);
        return Err(dispatch_limit(
            &format!("LSTM layer {} (batch {batch})", w.config.name),
            groups,
            max_groups,
        ));
    }
    let nchunks = steps.div_ceil(tc_max);
    let tc = steps.div_ceil(nchunks);
    let proj = alloc.buffer("projection", tc as u64 * per_step, storage);
    let seq_needed = w.config.return_sequences;
    let seq_size = (batch * steps * h * 4) as u64;
    if seq_needed {
        net.check_binding("output sequence", seq_size)?;
    }
    let seq = seq_needed
        .then(|| alloc.buffer("sequence", seq_size, storage | wgpu::BufferUsages::COPY_SRC));
    let last = alloc.buffer(
        "last output",
        (batch * h * 4) as u64,
        storage | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
    );
    // Per-chunk and per-step parameters, baked once for this shape.
    let mut params: Vec<u8> = Vec::new();
    let mut push = |bytes: &[u8]| {
        let off = params.len();
        params.extend_from_slice(bytes);
        params.resize(off + stride, 0);
        off as u32
    };
    // The whole-sequence kernel where chosen and where at least one timestep fits
    // the adapter's loop budget; it then runs `per_dispatch` timesteps a dispatch.
    let chosen = net.kernel_choice.whole_sequence(choice_batch, h);
    let per_dispatch = if chosen && batch * h <= PERSISTENT_MAX_STATE {
        loops::sequence_steps_per_dispatch(batch, h, loops::budget(loop_cap))
    } else {
        0
    };
    let whole_sequence = per_dispatch > 0;
    if !whole_sequence {
        loops::check(
            &format!("LSTM layer {} ({h} units)", w.config.name),
            loops::step_iterations(h),
            loop_cap,
        )?;
    }
    loops::check(
        &format!("LSTM layer {} ({} inputs)", w.config.name, w.input_dim),
        loops::projection_iterations(w.input_dim),
        loop_cap,
    )?;
    let mut chunks = Vec::new();
    let mut dispatched = 0;
    for c in 0..nchunks {
        let (s0, s1) = (c * tc, ((c + 1) * tc).min(steps));
        let len = s1 - s0;
        let t_lo = if w.config.go_backwards {
            steps - s1
        } else {
            s0
        };
        let off = push(bytemuck::bytes_of(&ProjParams {
            rows: (batch * len) as u32,
            k: w.input_dim as u32,
            n: n as u32,
            tc: len as u32,
            seq_len: steps as u32,
            t_lo: t_lo as u32,
            has_bias: u32::from(w.bias.is_some()),
            _pad: 0,
        }));
        let gx = n.div_ceil(PROJECTION_COLUMNS) as u32;
        let gy = (batch * len).div_ceil(PROJECTION_ROWS) as u32;
        let mut recurrent = Vec::new();
        if whole_sequence {
            for a in (s0..s1).step_by(per_dispatch) {
                recurrent.push(push(bytemuck::bytes_of(&SeqParams {
                    batch: batch as u32,
                    units: h as u32,
                    tc: len as u32,
                    t_lo: t_lo as u32,
                    s_begin: a as u32,
                    s_end: (a + per_dispatch).min(s1) as u32,
                    seq_len: steps as u32,
                    go_backwards: u32::from(w.config.go_backwards),
                })));
            }
        } else {
            for s in s0..s1 {
                let t = if w.config.go_backwards {
                    steps - 1 - s
                } else {
                    s
                };
                recurrent.push(push(bytemuck::bytes_of(&StepParams {
                    batch: batch as u32,
                    units: h as u32,
                    tc: len as u32,
                    t_local: (t - t_lo) as u32,
                    t_abs: t as u32,
                    s_out: s as u32,
                    seq_len: steps as u32,
                    _pad: 0,
                })));
            }
        }
        let first = dispatched;
        dispatched += recurrent.len();
        chunks.push(ChunkPlan {
            projection: (off, gx, gy),
            recurrent,
            first,
        });
    }
    let params_buf = alloc.uniform("parameters", &params);
    let uniform = params_binding(&params_buf);
    let proj_bind = projection_bind_group(
        device,
        net.kernels.layout(Kernel::Projection),
        "projection",
        uniform.clone(),
        (&input.0, w.input_dim),
        &w.kernel,
        w.bias.as_ref(),
        &proj,
        (dummy, dummy_vec4),
    );
    let pair = &states.dirs[d];
    let step_bind = [0usize, 1].map(|p| {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("step"),
            layout: net.kernels.layout(Kernel::Step),
            entries: &[
                entry(0, uniform.clone()),
                entry(1, wgpu::BindingResource::TextureView(&w.recurrent)),
                entry(2, proj.as_entire_binding()),
                entry(3, mask.as_entire_binding()),
                entry(4, pair[p].as_entire_binding()),
                entry(5, pair[1 - p].as_entire_binding()),
                entry(6, last.as_entire_binding()),
                entry(7, seq.as_ref().unwrap_or(dummy).as_entire_binding()),
                // state_in as vec4s (step.wgsl reads it only when H % 4 == 0)
                entry(
                    8,
                    if h.is_multiple_of(4) {
                        &pair[p]
                    } else {
                        dummy_vec4
                    }
                    .as_entire_binding(),
                ),
            ],
        })
    });
    let step_pipeline = net.kernels.step(
        device,
        StepKey {
            activation: w.config.activation,
            recurrent_activation: w.config.recurrent_activation,
            zero_output_for_mask: w.config.zero_output_for_mask,
            has_mask: mask_on,
            write_sequence: seq_needed,
            whole_sequence,
        },
    )?;
    let step_groups = if whole_sequence {
        (1, 1)
    } else {
        (h.div_ceil(STEP_THREADS), batch.div_ceil(STEP_ROWS))
    };
    if step_groups.0 > max_groups || step_groups.1 > max_groups {
        return Err(dispatch_limit(
            &format!("LSTM layer {} (batch {batch}, {h} units)", w.config.name),
            step_groups.0.max(step_groups.1),
            max_groups,
        ));
    }
    Ok(DirPlan {
        last,
        seq,
        proj_bind,
        proj_pipeline: net.kernels.pipeline(device, Kernel::Projection, &[])?,
        step_bind,
        step_pipeline,
        chunks,
        step_groups: (step_groups.0 as u32, step_groups.1 as u32),
        final_parity: dispatched % 2,
    })
}
