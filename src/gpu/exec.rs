//! Running a plan: one compute pass that encodes its dispatches in order, the readback copies
//! into one staging buffer, one map; and turning the mapped bytes into outputs and a profile.

use super::context::GpuContext;
use super::plan::{Op, Plan};
use super::stats::{ForwardProfile, Phase};
use crate::error::{LstmError, Result};
use ndarray::{ArrayD, IxDyn};
use std::sync::{Arc, Mutex};

/// Where the map callback leaves its result.
pub(super) type MapSlot = Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>>;

/// Records `plan` into `encoder`: its clears, one compute pass with every dispatch (and the
/// timestamps when profiling), the copies into the staging buffer and the carried states.
/// Returns the number of dispatches.
pub(super) fn record(plan: &Plan, encoder: &mut wgpu::CommandEncoder) -> u32 {
    for b in &plan.clears {
        encoder.clear_buffer(b, 0, None);
    }
    let mut dispatches = 0;
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("lstm forward"),
            timestamp_writes: None,
        });
        let mut stamp = 0u32;
        let mut mark = |pass: &mut wgpu::ComputePass<'_>| {
            if let Some(ts) = &plan.timestamps {
                pass.write_timestamp(&ts.set, stamp);
                stamp += 1;
            }
        };
        mark(&mut pass);
        for op in &plan.ops {
            match op {
                Op::Dispatch(d) => {
                    pass.set_pipeline(&d.pipeline);
                    pass.set_bind_group(0, &d.bind, &d.offsets);
                    pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
                    dispatches += 1;
                }
                Op::Mark(_) => mark(&mut pass),
            }
        }
    }
    for (src, src_off, dst_off, size) in &plan.copies {
        encoder.copy_buffer_to_buffer(src, *src_off, &plan.staging, *dst_off, *size);
    }
    if let Some(ts) = &plan.timestamps {
        let n = ts.phases.len() as u32;
        encoder.resolve_query_set(&ts.set, 0..n, &ts.resolve, 0);
        encoder.copy_buffer_to_buffer(&ts.resolve, 0, &plan.staging, ts.offset, None);
    }
    for (from, to) in &plan.carries {
        encoder.copy_buffer_to_buffer(from, 0, to, 0, None);
    }
    dispatches
}

/// Requests the map of the plan's staging buffer; the slot is filled when it completes.
pub(super) fn map(plan: &Plan) -> MapSlot {
    let slot: MapSlot = Arc::new(Mutex::new(None));
    let callback_slot = slot.clone();
    plan.staging
        .map_async(wgpu::MapMode::Read, ..plan.staging_size, move |r| {
            *callback_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        });
    slot
}

/// Whether the map requested at submit has completed.
pub(super) fn is_mapped(slot: &MapSlot) -> bool {
    slot.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// Waits until the map of `staging` (requested at submit) completes and returns its bytes.
pub(super) fn wait_and_read(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    size: u64,
    slot: &MapSlot,
) -> Result<Vec<u8>> {
    let mapped = loop {
        if let Some(r) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            break r;
        }
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| LstmError::Device {
                message: format!("waiting for the forward: {e}"),
            })?;
    };
    mapped.map_err(|e| LstmError::Device {
        message: format!("mapping the outputs: {e}"),
    })?;
    let data = {
        let view = staging
            .get_mapped_range(..size)
            .map_err(|e| LstmError::Device {
                message: format!("reading the outputs: {e}"),
            })?;
        view.to_vec()
    };
    staging.unmap();
    Ok(data)
}

/// The outputs in the readback bytes `data` of `plan`.
pub(super) fn outputs(plan: &Plan, data: &[u8]) -> Vec<ArrayD<f32>> {
    plan.outputs
        .iter()
        .map(|o| {
            let n: usize = o.shape.iter().product();
            let values: Vec<f32> =
                bytemuck::pod_collect_to_vec(&data[o.offset * 4..(o.offset + n) * 4]);
            ArrayD::from_shape_vec(IxDyn(&o.shape), values)
                .expect("staging layout matches the output shape")
        })
        .collect()
}

/// The GPU phases of a profiled plan from the timestamps in `data` (host times left zero).
pub(super) fn gpu_profile(plan: &Plan, data: &[u8], queue: &wgpu::Queue) -> Option<ForwardProfile> {
    let ts = plan.timestamps.as_ref()?;
    let period = f64::from(queue.get_timestamp_period()) * 1e-9;
    let start = ts.offset as usize;
    let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&data[start..start + 8 * ts.phases.len()]);
    let mut p = ForwardProfile::default();
    for (k, phase) in ts.phases.iter().enumerate().skip(1) {
        let dt = ticks[k].saturating_sub(ticks[k - 1]) as f64 * period;
        match phase {
            Phase::Projection => p.projection_s += dt,
            Phase::Steps => p.steps_s += dt,
            Phase::Merge => p.merge_s += dt,
            Phase::Layers => p.layers_s += dt,
            Phase::Start => {}
        }
    }
    Some(p)
}

/// The batch rows that fit a limit of `max` bytes when `rows` rows need `need` (the buffers
/// grow in proportion to the batch).
pub(super) fn rows_within(rows: usize, need: u64, max: u64) -> usize {
    ((rows as u128 * max as u128) / need.max(1) as u128) as usize
}
