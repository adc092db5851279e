//! Running a plan: uploads, one command encoder with one compute pass, one submission and
//! one readback per forward (batch chunks when a buffer exceeds the binding limit), and
//! reading the outputs back.

use super::context::GpuContext;
use super::network::GpuNetwork;
use super::plan::PlanKey;
use super::stats::{ForwardProfile, ForwardStats, Phase};
use crate::error::{LstmError, Result};
use ndarray::{ArrayD, ArrayView2, ArrayView3, IxDyn};
use std::sync::{Arc, Mutex};

/// Where the map callback leaves its result.
pub(super) type MapSlot = Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>>;

/// A submitted forward: where its outputs will be and what it cost so far.
pub(super) struct Pending {
    pub(super) key: PlanKey,
    /// Set by the map callback when the outputs are readable.
    pub(super) mapped: MapSlot,
    pub(super) stats: ForwardStats,
    pub(super) started: std::time::Instant,
    pub(super) submitted: std::time::Instant,
}

/// A forward that has been submitted to the GPU and not read back yet: the application can do
/// its own work meanwhile, then [`wait`](PendingForward::wait) for the outputs.
///
/// ```no_run
/// # use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
/// # use lstm_wgpu::{LayerConfig, LstmConfig, Network};
/// # let net = Network::<f32>::random(&LayerConfig::Lstm(LstmConfig::new(8)), 4, 0)?;
/// let mut gpu = GpuNetwork::new(GpuContext::new()?, &net)?;
/// let x = ndarray::Array3::<f32>::zeros((2, 50, 4));
/// let pending = gpu.forward_async(x.view(), None, None)?;
/// // ... the application's own work, while the GPU runs ...
/// let outputs = pending.wait()?;
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
#[must_use = "the outputs are read by wait()"]
pub struct PendingForward<'a> {
    pub(super) net: &'a mut GpuNetwork,
}

impl PendingForward<'_> {
    /// Whether the GPU has finished (checks without blocking).
    pub fn is_ready(&self) -> bool {
        let _ = self.net.ctx.device().poll(wgpu::PollType::Poll);
        self.net
            .pending
            .as_ref()
            .is_some_and(|p| p.mapped.lock().unwrap_or_else(|e| e.into_inner()).is_some())
    }

    /// Waits for the GPU and returns the outputs, as [`GpuNetwork::forward`] does.
    pub fn wait(self) -> Result<Vec<ArrayD<f32>>> {
        self.net.finish()
    }
}

impl GpuNetwork {
    /// Submits a forward, in one submission when its buffers fit the adapter's limits, else in
    /// batch chunks (then run to the end before this returns: the outputs wait in `ready`).
    pub(super) fn submit(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<()> {
        // An earlier forward_async whose outputs were never read.
        self.finish_pending();
        let batch = x.dim().0;
        match self.submit_whole(x, initial_state, mask, batch) {
            Err(e @ LstmError::Limit { .. }) if self.stateful() => Err(e.with_hint(
                "a stateful network keeps one state for its whole batch and cannot run it in \
                 batch chunks: use a smaller batch",
            )),
            Err(e @ LstmError::Limit { .. }) => {
                let (outputs, stats) = self.forward_in_chunks(x, initial_state, mask, e)?;
                self.ready = Some((outputs, stats));
                Ok(())
            }
            r => r,
        }
    }

    /// Runs the forward over batch rows `[0, rows)`, `[rows, 2·rows)`, ... (one submission
    /// each), with as many rows as `limit` (the whole batch's limit error) says fit, fewer when
    /// a chunk still exceeds a limit, and joins the outputs along the batch axis. Every row is
    /// computed as in a whole-batch forward, so the outputs are the same bits.
    pub(super) fn forward_in_chunks(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
        limit: LstmError,
    ) -> Result<(Vec<ArrayD<f32>>, ForwardStats)> {
        use ndarray::{s, Axis};
        let batch = x.dim().0;
        let mut rows = batch;
        // The last limit error and how many rows it was for, until the rows are shrunk to it.
        let mut failed = Some((limit, batch));
        let mut parts: Vec<Vec<ArrayD<f32>>> = Vec::new();
        let mut total = ForwardStats::default();
        let mut r0 = 0;
        while r0 < batch {
            if let Some((mut limit, tried)) = failed.take() {
                let LstmError::Limit { need, max, .. } = &mut limit else {
                    return Err(limit);
                };
                rows = rows_within(tried, *need, *max).min(rows - 1);
                if rows == 0 {
                    // The buffers grow with the batch: one row needs 1/tried of what failed.
                    *need = need.div_ceil(tried as u64);
                    return Err(limit.with_hint(
                        "even one batch row exceeds it: use fewer timesteps per call (a \
                         stateful layer carries the state across calls) or the CPU path",
                    ));
                }
            }
            let r1 = (r0 + rows).min(batch);
            let init: Option<Vec<ArrayView2<f32>>> =
                initial_state.map(|i| i.iter().map(|a| a.slice(s![r0..r1, ..])).collect());
            let run = self
                .submit_whole(
                    x.slice(s![r0..r1, .., ..]),
                    init.as_deref(),
                    mask.map(|m| m.slice_move(s![r0..r1, ..])),
                    batch,
                )
                .and_then(|()| self.finish());
            match run {
                Ok(out) => {
                    total += ForwardStats {
                        batch_chunks: 1,
                        ..self.stats
                    };
                    parts.push(out);
                    r0 = r1;
                }
                Err(e @ LstmError::Limit { .. }) => failed = Some((e, r1 - r0)),
                Err(e) => return Err(e),
            }
        }
        log::debug!(
            "batch {batch} ran in {} submissions of up to {rows} rows",
            parts.len()
        );
        let outputs = (0..parts[0].len())
            .map(|k| {
                let views: Vec<_> = parts.iter().map(|p| p[k].view()).collect();
                ndarray::concatenate(Axis(0), &views)
                    .map_err(|e| LstmError::invalid("outputs", format!("joining chunks: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((outputs, total))
    }

    /// Submits the forward of the whole batch `x` as one submission, with the recurrent
    /// kernels chosen for a batch of `choice_batch` rows.
    pub(super) fn submit_whole(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
        choice_batch: usize,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let (batch, steps, _) = self.check(x, initial_state, mask)?;
        let mut stats = ForwardStats {
            submits: 1,
            readbacks: 1,
            ..Default::default()
        };
        if self.stateful() {
            if let Some(s) = &self.states {
                if s.batch != batch {
                    return Err(LstmError::StatefulBatchChanged {
                        expected: s.batch,
                        actual: batch,
                    });
                }
            }
        }
        if self.states.as_ref().is_none_or(|s| s.batch != batch) {
            self.states = None;
            self.plans.clear();
            let states = self.create_states(batch)?;
            stats.buffers_created += 2 * self.dirs.len() as u32;
            self.states = Some(states);
            self.state_valid = false;
        }
        let key = (batch, steps, mask.is_some(), choice_batch);
        match self.plans.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                let entry = self.plans.remove(i);
                self.plans.push(entry);
            }
            None => {
                let plan = self.build_plan(key)?;
                stats.bytes_uploaded += plan.params_bytes;
                stats.buffers_created += plan.buffers;
                if self.plans.len() >= self.plan_capacity {
                    self.plans.remove(0);
                }
                self.plans.push((key, plan));
            }
        }
        let plan = &self.plans.last().expect("the plan was just placed").1;
        let states = self.states.as_ref().expect("states were just built");
        let queue = self.ctx.queue();

        // Uploads: x, mask, initial states.
        let x_std = x.as_standard_layout();
        let x_bytes: &[u8] = bytemuck::cast_slice(x_std.as_slice().expect("standard layout"));
        queue.write_buffer(&plan.x, 0, x_bytes);
        stats.bytes_uploaded += x_bytes.len() as u64;
        if let Some(m) = mask {
            let words: Vec<u32> = m.iter().map(|&v| u32::from(v)).collect();
            queue.write_buffer(&plan.mask, 0, bytemuck::cast_slice(&words));
            stats.bytes_uploaded += 4 * words.len() as u64;
        }
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("lstm forward"),
                });
        let carry = self.stateful() && self.state_valid;
        match initial_state {
            Some(init) => {
                // [h0, c0] per direction of the single stage.
                for (d, pair) in init.chunks(2).enumerate() {
                    let h: Vec<f32> = pair[0].iter().copied().collect();
                    let c: Vec<f32> = pair[1].iter().copied().collect();
                    let bh = (4 * h.len()) as u64;
                    queue.write_buffer(&states.dirs[d][0], 0, bytemuck::cast_slice(&h));
                    queue.write_buffer(&states.dirs[d][0], bh, bytemuck::cast_slice(&c));
                    stats.bytes_uploaded += 2 * bh;
                }
            }
            None if carry => {}
            None => {
                for pair in &states.dirs {
                    encoder.clear_buffer(&pair[0], 0, None);
                }
            }
        }
        for d in &plan.dirs {
            encoder.clear_buffer(&d.last, 0, None);
        }

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
            for (k, stage) in self.stages.iter().enumerate() {
                for d in stage.dirs() {
                    let dp = &plan.dirs[d];
                    for chunk in &dp.chunks {
                        let (offset, gx, gy) = chunk.projection;
                        pass.set_pipeline(&dp.proj_pipeline);
                        pass.set_bind_group(0, &dp.proj_bind, &[offset]);
                        pass.dispatch_workgroups(gx, gy, 1);
                        stats.dispatches += 1;
                        mark(&mut pass);
                        pass.set_pipeline(&dp.step_pipeline);
                        for (n, offset) in chunk.recurrent.iter().enumerate() {
                            let parity = (chunk.first + n) % 2;
                            pass.set_bind_group(0, &dp.step_bind[parity], &[*offset]);
                            pass.dispatch_workgroups(dp.step_groups.0, dp.step_groups.1, 1);
                            stats.dispatches += 1;
                        }
                        mark(&mut pass);
                    }
                    stats.projection_chunks += dp.chunks.len() as u32;
                }
                if let Some(m) = &plan.merges[k] {
                    pass.set_pipeline(&m.pipeline);
                    pass.set_bind_group(0, &m.bind, &[]);
                    pass.dispatch_workgroups(m.groups.0, m.groups.1, 1);
                    stats.dispatches += 1;
                    mark(&mut pass);
                }
                if let Some(e) = &plan.extras[k] {
                    for (pipeline, bind, offsets, gx, gy) in &e.dispatches {
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, bind, offsets);
                        pass.dispatch_workgroups(*gx, *gy, 1);
                        stats.dispatches += 1;
                    }
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
        if self.stateful() {
            // Keep the carried state in buffer [0] of each pair for the next call.
            for (d, dp) in plan.dirs.iter().enumerate() {
                if dp.final_parity == 1 {
                    let pair = &states.dirs[d];
                    encoder.copy_buffer_to_buffer(&pair[1], 0, &pair[0], 0, None);
                }
            }
        }
        let ctx = self.ctx.clone();
        let submitted = std::time::Instant::now();
        ctx.checked("recording the forward", || {
            queue.submit([encoder.finish()]);
        })?;
        let slot: MapSlot = Arc::new(Mutex::new(None));
        let callback_slot = slot.clone();
        plan.staging
            .map_async(wgpu::MapMode::Read, ..plan.staging_size, move |r| {
                *callback_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        stats.bytes_read_back = plan.staging_size;
        self.state_valid = self.stateful();
        self.pending = Some(Pending {
            key,
            mapped: slot,
            stats,
            started,
            submitted,
        });
        Ok(())
    }

    /// Waits for the submitted forward and reads its outputs.
    pub(super) fn finish(&mut self) -> Result<Vec<ArrayD<f32>>> {
        if let Some((outputs, stats)) = self.ready.take() {
            self.stats = stats;
            return Ok(outputs);
        }
        let pending = self
            .pending
            .take()
            .ok_or_else(|| LstmError::invalid("forward", "no forward was submitted"))?;
        let plan = self
            .plan(pending.key)
            .expect("a pending forward's plan stays cached until it is read");
        let data = wait_and_read(&self.ctx, &plan.staging, plan.staging_size, &pending.mapped)?;
        let mapped = std::time::Instant::now();
        let outputs = plan
            .outputs
            .iter()
            .map(|o| {
                let n: usize = o.shape.iter().product();
                let values: Vec<f32> =
                    bytemuck::pod_collect_to_vec(&data[o.offset * 4..(o.offset + n) * 4]);
                let a = ArrayD::from_shape_vec(IxDyn(&o.shape), values)
                    .expect("staging layout matches the output shape");
                match &o.cols {
                    None => a,
                    Some(r) => {
                        let last = a.ndim() - 1;
                        a.slice_axis(ndarray::Axis(last), r.clone().into())
                            .to_owned()
                    }
                }
            })
            .collect();
        let queue = self.ctx.queue();
        self.profile = plan.timestamps.as_ref().map(|ts| {
            let period = f64::from(queue.get_timestamp_period()) * 1e-9;
            let start = ts.offset as usize;
            let ticks: Vec<u64> =
                bytemuck::pod_collect_to_vec(&data[start..start + 8 * ts.phases.len()]);
            let mut p = ForwardProfile {
                upload_s: (pending.submitted - pending.started).as_secs_f64(),
                wait_s: (mapped - pending.submitted).as_secs_f64(),
                readback_s: mapped.elapsed().as_secs_f64(),
                ..Default::default()
            };
            for (k, phase) in ts.phases.iter().enumerate().skip(1) {
                let dt = ticks[k].saturating_sub(ticks[k - 1]) as f64 * period;
                match phase {
                    Phase::Projection => p.projection_s += dt,
                    Phase::Steps => p.steps_s += dt,
                    Phase::Merge => p.merge_s += dt,
                    Phase::Start => {}
                }
            }
            p
        });
        self.stats = pending.stats;
        match &self.output_select {
            None => Ok(outputs),
            Some(select) => {
                let mut outputs: Vec<Option<ArrayD<f32>>> = outputs.into_iter().map(Some).collect();
                select
                    .iter()
                    .map(|&k| {
                        outputs.get_mut(k).and_then(Option::take).ok_or_else(|| {
                            LstmError::invalid("model outputs", format!("no output {k}"))
                        })
                    })
                    .collect()
            }
        }
    }
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

/// The batch rows that fit a limit of `max` bytes when `rows` rows need `need` (the buffers
/// grow in proportion to the batch).
pub(super) fn rows_within(rows: usize, need: u64, max: u64) -> usize {
    ((rows as u128 * max as u128) / need.max(1) as u128) as usize
}
