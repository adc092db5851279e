//! Running a forward: uploads, one command encoder with the plan's pass, one submission and
//! one readback (batch chunks when a buffer exceeds the binding limit), reading the outputs.

use super::{GpuNetwork, Pending};
use crate::error::{LstmError, Result};
use crate::gpu::exec::{gpu_profile, map, outputs, record, rows_within, wait_and_read};
use crate::gpu::plan::PlanKey;
use crate::gpu::stats::{ForwardProfile, ForwardStats};
use ndarray::{ArrayD, ArrayView2, ArrayViewD};

impl GpuNetwork {
    /// Submits a forward, in one submission when its buffers fit the adapter's limits, else in
    /// batch chunks (then run to the end before this returns: the outputs wait in `ready`).
    pub(super) fn submit(
        &mut self,
        xs: &[ArrayViewD<f32>],
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<()> {
        // An earlier forward_async whose outputs were never read.
        self.finish_pending();
        let batch = xs
            .first()
            .map_or(0, |x| x.shape().first().copied().unwrap_or(0));
        match self.submit_whole(xs, initial_state, mask, batch) {
            Err(e @ LstmError::Limit { .. }) if !self.feedback.is_empty() => Err(e.with_hint(
                "outputs fed back into inputs on the GPU need one submission: use a smaller batch",
            )),
            Err(e @ LstmError::Limit { .. }) if self.stateful() => Err(e.with_hint(
                "a stateful network keeps one state for its whole batch and cannot run it in \
                 batch chunks: use a smaller batch",
            )),
            Err(e @ LstmError::Limit { .. }) => {
                let (outputs, stats) = self.forward_in_chunks(xs, initial_state, mask, e)?;
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
        xs: &[ArrayViewD<f32>],
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
        limit: LstmError,
    ) -> Result<(Vec<ArrayD<f32>>, ForwardStats)> {
        use ndarray::{s, Axis, Slice};
        let batch = xs.first().map_or(0, |x| x.shape()[0]);
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
            let part: Vec<ArrayViewD<f32>> = xs
                .iter()
                .map(|x| x.slice_axis(Axis(0), Slice::from(r0..r1)))
                .collect();
            let run = self
                .submit_whole(
                    &part,
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
        xs: &[ArrayViewD<f32>],
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
        choice_batch: usize,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let batch = self.check(xs, initial_state, mask)?;
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
            stats.buffers_created += 2 * states.dirs.len() as u32;
            self.states = Some(states);
            self.state_valid = false;
        }
        let key = PlanKey {
            shapes: xs.iter().map(|x| x.shape().to_vec()).collect(),
            has_mask: mask.is_some(),
            choice_batch,
        };
        match self.plans.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                let entry = self.plans.remove(i);
                self.plans.push(entry);
            }
            None => {
                let profile = self.can_profile();
                let states = self.states.as_ref().expect("states were just built");
                let plan =
                    self.model
                        .plan(&key, states, self.kernel_choice, profile, &mut self.pool)?;
                stats.bytes_uploaded += plan.params_bytes;
                stats.buffers_created += plan.buffers;
                if self.plans.len() >= self.plan_capacity {
                    self.plans.remove(0);
                }
                self.plans.push((key.clone(), plan));
            }
        }
        let plan = &self.plans.last().expect("the plan was just placed").1;
        let states = self.states.as_ref().expect("states were just built");
        let ctx = &self.model.ctx;
        let queue = ctx.queue();

        // Outputs to feed back: each must have its input's shape.
        for &(k, j) in &self.feedback {
            let (out, want) = (plan.outputs.get(k), key.shapes.get(j));
            if out.map(|o| &o.shape) != want || want.is_none() {
                return Err(LstmError::invalid(
                    "feedback",
                    format!(
                        "output {k} (shape {:?}) cannot feed input {j} (shape {want:?})",
                        out.map(|o| &o.shape)
                    ),
                ));
            }
        }
        let fed: Vec<usize> = if !self.feedback.is_empty() && self.fed_plan.as_ref() == Some(&key) {
            self.feedback.iter().map(|&(_, j)| j).collect()
        } else {
            Vec::new()
        };
        // Uploads: the inputs (but those fed on the GPU), the mask (as 0.0/1.0 floats),
        // initial states.
        for (j, (x, buf)) in xs.iter().zip(&plan.inputs).enumerate() {
            if fed.contains(&j) {
                continue;
            }
            let x_std = x.as_standard_layout();
            let x_bytes: &[u8] = bytemuck::cast_slice(x_std.as_slice().expect("standard layout"));
            queue.write_buffer(buf, 0, x_bytes);
            stats.bytes_uploaded += x_bytes.len() as u64;
        }
        if let (Some(m), Some(buf)) = (mask, &plan.mask) {
            let words: Vec<f32> = m.iter().map(|&v| if v { 1.0 } else { 0.0 }).collect();
            queue.write_buffer(buf, 0, bytemuck::cast_slice(&words));
            stats.bytes_uploaded += 4 * words.len() as u64;
        }
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("lstm forward"),
            });
        match initial_state {
            Some(init) => {
                // [h0, c0] (LSTM) or [h0] per direction of the single stage.
                let mut tensors = init.iter();
                for (d, dir) in self.model.directions().iter().enumerate() {
                    let mut offset = 0;
                    for s in tensors.by_ref().take(dir.cell.states()) {
                        let values: Vec<f32> = s.iter().copied().collect();
                        queue.write_buffer(
                            &states.dirs[d][0],
                            offset,
                            bytemuck::cast_slice(&values),
                        );
                        offset += (4 * values.len()) as u64;
                    }
                    stats.bytes_uploaded += offset;
                }
            }
            None => {
                // Zero states, except the state a stateful direction carries.
                for (pair, dir) in states.dirs.iter().zip(self.model.directions()) {
                    if !(dir.stateful && self.state_valid) {
                        encoder.clear_buffer(&pair[0], 0, None);
                    }
                }
            }
        }
        stats.dispatches = record(plan, &mut encoder);
        stats.projection_chunks = plan.projection_chunks;
        for &(k, j) in &self.feedback {
            let (src, offset, _, bytes) = &plan.copies[k];
            encoder.copy_buffer_to_buffer(src, *offset, &plan.inputs[j], 0, *bytes);
        }
        self.fed_plan = (!self.feedback.is_empty()).then(|| key.clone());
        let submitted = std::time::Instant::now();
        ctx.checked("recording the forward", || {
            queue.submit([encoder.finish()]);
        })?;
        let mapped = map(plan);
        stats.bytes_read_back = plan.staging_size;
        self.state_valid = self.stateful();
        self.pending = Some(Pending {
            key,
            mapped,
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
            .plan(&pending.key)
            .expect("a pending forward's plan stays cached until it is read");
        let ctx = &self.model.ctx;
        let data = wait_and_read(ctx, &plan.staging, plan.staging_size, &pending.mapped)?;
        let mapped = std::time::Instant::now();
        let outputs = outputs(plan, &data);
        self.profile = gpu_profile(plan, &data, ctx.queue()).map(|p| ForwardProfile {
            upload_s: (pending.submitted - pending.started).as_secs_f64(),
            wait_s: (mapped - pending.submitted).as_secs_f64(),
            readback_s: mapped.elapsed().as_secs_f64(),
            ..p
        });
        self.stats = pending.stats;
        Ok(outputs)
    }
}
