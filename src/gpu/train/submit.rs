//! Submitting a recorded training pass: the pipelines, the bind groups, one compute pass,
//! one staging copy of the reads, one map.

use super::record::{Read, Recorder, Work};
use super::{Backward, GpuRecurrentTrainer, GpuTape};
use crate::config::Cell;
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::params::{GemmParams, TrainStepParams, CELL_GRU, CELL_LSTM, CELL_SIMPLE_RNN};

impl GpuRecurrentTrainer {
    /// Binds, records and submits `rec`'s dispatches in one compute pass, copies `reads`
    /// into one staging buffer, waits and returns their values.
    pub(super) fn submit(
        &self,
        rec: Recorder<'_>,
        tape: &GpuTape,
        back: Option<&Backward>,
        reads: &[Read<'_>],
    ) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.cfg;
        let device = self.ctx.device();
        let q = self.ctx.queue();
        let flag = |v: bool| if v { 1.0 } else { 0.0 };
        let cell = match cfg.cell {
            Cell::Lstm => CELL_LSTM,
            Cell::Gru { .. } => CELL_GRU,
            Cell::SimpleRnn => CELL_SIMPLE_RNN,
        };
        let constants = [
            ("CELL", f64::from(cell)),
            ("GATES", cfg.cell.gates() as f64),
            ("ACTIVATION", f64::from(cfg.activation.id())),
            (
                "RECURRENT_ACTIVATION",
                f64::from(cfg.recurrent_activation.id()),
            ),
            ("ZERO_OUTPUT_FOR_MASK", flag(cfg.zero_output_for_mask)),
            ("HAS_MASK", flag(tape.has_mask)),
            ("RETURN_SEQUENCES", flag(cfg.return_sequences)),
            ("HAS_RECURRENT_BIAS", flag(self.two_biases)),
        ];
        let kernels = self.ctx.kernels()?;
        let uses = |k: Kernel| {
            rec.work
                .iter()
                .any(|w| matches!(w, Work::Step { kernel, .. } if *kernel == k))
        };
        let forward = if uses(Kernel::TrainForward) {
            Some(kernels.pipeline(device, Kernel::TrainForward, &constants)?)
        } else {
            None
        };
        let backward = match back {
            Some(_) if uses(Kernel::TrainBackward) => {
                Some(kernels.pipeline(device, Kernel::TrainBackward, &constants)?)
            }
            _ => None,
        };
        let gemm = kernels.pipeline(device, Kernel::TrainGemm, &[])?;
        let total: usize = reads.iter().map(|r| r.2).sum();
        let staging =
            self.ctx.checked("recording the GPU training pass", || {
                let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("training parameters"),
                    size: (rec.uniforms.len() + 64).next_multiple_of(256) as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                q.write_buffer(&uniform, 0, &rec.uniforms);
                let block = |at: usize, size: usize| {
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &uniform,
                        offset: at as u64,
                        size: wgpu::BufferSize::new(size as u64),
                    })
                };
                let bind =
                    |kernel: Kernel, first: wgpu::BindingResource<'_>, rest: &[&wgpu::Buffer]| {
                        let mut entries = vec![wgpu::BindGroupEntry {
                            binding: 0,
                            resource: first,
                        }];
                        entries.extend(rest.iter().enumerate().map(|(k, buf)| {
                            wgpu::BindGroupEntry {
                                binding: k as u32 + 1,
                                resource: buf.as_entire_binding(),
                            }
                        }));
                        device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some(kernel.name()),
                            layout: kernels.layout(kernel),
                            entries: &entries,
                        })
                    };
                let step_size = std::mem::size_of::<TrainStepParams>();
                let fwd_bind = forward.as_ref().map(|_| {
                    bind(
                        Kernel::TrainForward,
                        block(0, step_size),
                        &[
                            &self.rk,
                            &tape.proj,
                            &tape.mask,
                            &tape.state,
                            &tape.tape,
                            &tape.seq,
                        ],
                    )
                });
                let bwd_bind = back.filter(|_| backward.is_some()).map(|back| {
                    bind(
                        Kernel::TrainBackward,
                        block(0, step_size),
                        &[
                            &self.rkt,
                            &tape.proj,
                            &tape.mask,
                            &tape.tape,
                            &back.cot,
                            &back.bstate,
                            &back.dz,
                        ],
                    )
                });
                let gemm_size = std::mem::size_of::<GemmParams>();
                let staging = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("training readback"),
                    size: (4 * total.max(1)) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("training pass"),
                });
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("training pass"),
                        timestamp_writes: None,
                    });
                    for w in &rec.work {
                        match w {
                            Work::Gemm {
                                at,
                                a,
                                b,
                                c,
                                groups,
                            } => {
                                let bg = bind(Kernel::TrainGemm, block(*at, gemm_size), &[a, b, c]);
                                pass.set_pipeline(&gemm);
                                pass.set_bind_group(0, &bg, &[]);
                                pass.dispatch_workgroups(groups.0, groups.1, 1);
                            }
                            Work::Step { kernel, at, groups } => {
                                let (pipe, bg) = if *kernel == Kernel::TrainForward {
                                    (forward.as_ref(), fwd_bind.as_ref())
                                } else {
                                    (backward.as_ref(), bwd_bind.as_ref())
                                };
                                let (Some(pipe), Some(bg)) = (pipe, bg) else {
                                    continue;
                                };
                                pass.set_pipeline(pipe);
                                pass.set_bind_group(0, bg, &[*at as u32]);
                                pass.dispatch_workgroups(groups.0, groups.1, 1);
                            }
                        }
                    }
                }
                let mut off = 0u64;
                for (buf, from, len) in reads {
                    let bytes = (4 * len) as u64;
                    encoder.copy_buffer_to_buffer(buf, (4 * from) as u64, &staging, off, bytes);
                    off += bytes;
                }
                q.submit([encoder.finish()]);
                staging
            })?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        let failed = |e: &dyn std::fmt::Display| LstmError::Device {
            message: format!("reading the training results back: {e}"),
        };
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| failed(&e))?;
        rx.recv().map_err(|e| failed(&e))?.map_err(|e| failed(&e))?;
        let values: Vec<f32> = {
            let view = staging.get_mapped_range(..).map_err(|e| failed(&e))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        staging.unmap();
        let mut parts = Vec::with_capacity(reads.len());
        let mut off = 0;
        for (_, _, len) in reads {
            parts.push(values[off..off + len].to_vec());
            off += len;
        }
        Ok(parts)
    }
}
