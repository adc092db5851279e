//! The plan builder of one recurrent direction (LSTM, GRU or SimpleRNN): its input projection (in chunks of timesteps that
//! fit the binding limit) and its recurrent dispatches (one per timestep, or runs of timesteps
//! of the whole-sequence kernel within the driver's loop limit). Kernels: projection.wgsl,
//! step.wgsl, sequence.wgsl; CPU twin: `cpu::reference::run`.

use super::context::{dispatch_limit, entry, params_binding};
use super::gather::Gather;
use super::{Args, GpuStage, PlanContext, Tensor};
use crate::config::{Cell, LstmConfig};
use crate::error::{LstmError, Result};
use crate::gpu::kernels::{Kernel, StepKey};
use crate::gpu::loops;
use crate::gpu::params::{
    ProjParams, SeqParams, StepParams, CELL_GRU, CELL_GRU_CANDIDATE, CELL_GRU_RESET, CELL_LSTM,
    CELL_SIMPLE_RNN, PERSISTENT_MAX_STATE, PROJECTION_COLUMNS, PROJECTION_ROWS, STEP_ROWS,
    STEP_THREADS,
};
use crate::gpu::stats::Phase;
use crate::gpu::upload::DirWeights;

/// A recurrent layer (one direction; LSTM, GRU or SimpleRNN): its weights and the index of its
/// state buffers.
#[derive(Debug)]
pub(crate) struct LstmStage {
    pub(crate) weights: DirWeights,
    /// Which of the plan's state pairs is this direction's.
    pub(crate) state: usize,
    /// Keras 2's rule: the input's mask applies with initial states too.
    pub(crate) keras2_call_mask: bool,
}

/// Where a planned direction leaves its outputs.
pub(crate) struct DirOutputs {
    /// The output sequence `[B, T, H]` (return_sequences), else the last output `[B, H]`.
    pub(crate) out: wgpu::Buffer,
    /// The buffer holding the final `[h | c]`.
    pub(crate) state: wgpu::Buffer,
}

impl GpuStage for LstmStage {
    fn directions(&self) -> Vec<&LstmConfig> {
        vec![&self.weights.config]
    }

    fn state_slots(&self) -> Vec<(usize, usize)> {
        vec![(self.state, self.weights.config.units)]
    }

    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let c = &self.weights.config;
        let RecurrentArgs {
            x,
            init,
            out_mask: mask,
        } = recurrent_args(cx, args, &c.name, self.keras2_call_mask)?;
        let dir = self.plan_direction(cx, &x, &init)?;
        let shape = if c.return_sequences {
            x.shape[..2].iter().copied().chain([c.units]).collect()
        } else {
            vec![cx.batch, c.units]
        };
        let mut outputs = vec![Tensor {
            buf: dir.out,
            offset: 0,
            shape,
            mask: if c.return_sequences { mask } else { None },
        }];
        if c.return_state {
            outputs.extend(state_outputs(cx, &dir.state, c)?);
        }
        Ok(outputs)
    }
}

/// What a recurrent call reads and gives.
pub(crate) struct RecurrentArgs {
    /// The input, with the mask it runs under: an explicit `mask=` tensor, else the input's
    /// own, except in a Keras 3 call with `initial_state=` tensors, which runs unmasked.
    pub x: Tensor,
    /// The initial-state tensors (`initial_state=`, or the positional tensors after the
    /// input, as Keras takes them).
    pub init: Vec<Tensor>,
    /// The mask of its sequence outputs: the input's own (Keras's `compute_mask`).
    pub out_mask: Option<wgpu::Buffer>,
}

/// The [`RecurrentArgs`] of a call.
pub(crate) fn recurrent_args(
    cx: &mut PlanContext<'_, '_>,
    args: &Args<'_>,
    name: &str,
    keras2_call_mask: bool,
) -> Result<RecurrentArgs> {
    let (x, positional) = args
        .inputs
        .split_first()
        .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "no input"))?;
    let init = if args.states.is_empty() {
        positional.to_vec()
    } else {
        args.states.to_vec()
    };
    let out_mask = x.mask.clone();
    let mut x = x.clone();
    if let Some(m) = args.mask {
        x.mask = Some(cx.as_mask(&format!("mask of layer {name}"), m)?);
    } else if !args.states.is_empty() && !keras2_call_mask {
        // Keras 3: a call with initial_state tensors gets no mask (CPU twin: `Recurrent`).
        x.mask = None;
    }
    Ok(RecurrentArgs { x, init, out_mask })
}

/// The final state of a direction as outputs `[B, H]` (h and c of an LSTM, h of the
/// others): views of the state buffer `[h | c]`, or copies of it when the layer is called
/// again in the model (the next call reuses the buffer).
pub(crate) fn state_outputs(
    cx: &mut PlanContext<'_, '_>,
    state: &wgpu::Buffer,
    config: &LstmConfig,
) -> Result<Vec<Tensor>> {
    let (b, h) = (cx.batch, config.units);
    (0..config.cell.states())
        .map(|k| {
            if !cx.repeated {
                return Ok(Tensor {
                    buf: state.clone(),
                    offset: (k * b * h * 4) as u64,
                    shape: vec![b, h],
                    mask: None,
                });
            }
            let mut g = Gather::copy(&[b, h]);
            g.in_base = k * b * h;
            cx.gathered(&format!("state of {}", config.name), state, vec![b, h], &g)
        })
        .collect()
}

impl LstmStage {
    /// Plans this direction reading `input`.
    pub(crate) fn plan_direction(
        &self,
        cx: &mut PlanContext<'_, '_>,
        input: &Tensor,
        init: &[Tensor],
    ) -> Result<DirOutputs> {
        let w = &self.weights;
        let name = &w.config.name;
        let (batch, steps, width) = match input.shape[..] {
            [b, t, i] => (b, t, i),
            _ => {
                return Err(LstmError::invalid(
                    format!("input of layer {name}"),
                    format!(
                        "a recurrent layer reads a sequence [batch, timesteps, features], got \
                         shape {:?}",
                        input.shape
                    ),
                ))
            }
        };
        if width != w.input_dim {
            return Err(LstmError::shape(
                format!("input of layer {name}"),
                &[batch, steps, w.input_dim],
                &input.shape,
            ));
        }
        self.start_state(cx, init)?;
        let h = w.config.units;
        let cell = w.config.cell;
        let n = cell.gates() * h;
        // Projection chunks: as many timesteps as fit the binding limit and the dispatch
        // limit (a workgroup covers PROJECTION_ROWS rows and PROJECTION_COLUMNS columns).
        let per_step = (batch * n * 4) as u64;
        let by_bytes = (cx.max_binding() / per_step) as usize;
        let by_groups = cx.max_groups * PROJECTION_ROWS / batch;
        let tc_max = by_bytes.min(by_groups).min(steps);
        if by_bytes == 0 {
            return Err(super::buffers::limit_error(
                &format!("one timestep's input projection of {name}"),
                per_step,
                cx.max_binding(),
                "max_storage_buffer_binding_size",
            ));
        }
        if tc_max == 0 {
            let groups = batch.div_ceil(PROJECTION_ROWS);
            return Err(dispatch_limit(
                &format!("LSTM layer {name} (batch {batch})"),
                groups,
                cx.max_groups,
            ));
        }
        let nchunks = steps.div_ceil(tc_max);
        let tc = steps.div_ceil(nchunks);
        let proj = cx.storage(
            &format!("input projection of {name}"),
            tc as u64 * per_step,
            wgpu::BufferUsages::empty(),
        )?;
        let seq_needed = w.config.return_sequences;
        let seq = if seq_needed {
            Some(cx.storage(
                "output sequence",
                (batch * steps * h * 4) as u64,
                wgpu::BufferUsages::COPY_SRC,
            )?)
        } else {
            None
        };
        let last = cx.storage(
            "last output",
            (batch * h * 4) as u64,
            wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        )?;
        // The whole-sequence kernel reads the last output of the dispatch before it.
        cx.clear(&last);
        // Per-chunk and per-step parameters, baked once for this shape.
        let stride = cx.stride;
        let mut params: Vec<u8> = Vec::new();
        let mut push = |bytes: &[u8]| {
            let off = params.len();
            params.extend_from_slice(bytes);
            params.resize(off + stride, 0);
            off as u32
        };
        // The whole-sequence kernel where chosen and where at least one timestep fits
        // the adapter's loop budget; it then runs `per_dispatch` timesteps a dispatch.
        let chosen = cx.kernel_choice.whole_sequence(cx.choice_batch, h);
        let reset_first = cell == (Cell::Gru { reset_after: false });
        let per_dispatch = if chosen && batch * h <= PERSISTENT_MAX_STATE {
            loops::sequence_steps_per_dispatch(batch, h, reset_first, loops::budget(cx.loop_cap))
        } else {
            0
        };
        let whole_sequence = per_dispatch > 0;
        if !whole_sequence {
            loops::check(
                &format!("LSTM layer {name} ({h} units)"),
                loops::step_iterations(h),
                cx.loop_cap,
            )?;
        }
        loops::check(
            &format!("LSTM layer {name} ({} inputs)", w.input_dim),
            loops::projection_iterations(w.input_dim),
            cx.loop_cap,
        )?;
        // (projection parameter offset, its grid, the recurrent parameter offsets) per chunk
        let mut chunks = Vec::new();
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
            let groups = cx.check_groups(
                &format!("LSTM layer {name} (batch {batch})"),
                (
                    n.div_ceil(PROJECTION_COLUMNS),
                    (batch * len).div_ceil(PROJECTION_ROWS),
                ),
            )?;
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
            chunks.push((off, groups, recurrent));
        }
        let params_buf = cx.uniform("parameters", &params);
        let proj_bind = cx.projection_bind_group(
            "projection",
            &params_buf,
            (&input.buf, w.input_dim),
            &w.kernel,
            w.bias.as_ref(),
            &proj,
        );
        let pair = &cx.states.dirs[self.state];
        let step_bind = [0usize, 1].map(|p| {
            cx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("step"),
                layout: cx.kernels.layout(Kernel::Step),
                entries: &[
                    entry(0, params_binding(&params_buf)),
                    entry(1, wgpu::BindingResource::TextureView(&w.recurrent)),
                    entry(2, proj.as_entire_binding()),
                    entry(
                        3,
                        input
                            .mask
                            .as_ref()
                            .unwrap_or(&cx.dummy_vec4)
                            .as_entire_binding(),
                    ),
                    entry(4, pair[p].as_entire_binding()),
                    entry(5, pair[1 - p].as_entire_binding()),
                    entry(6, last.as_entire_binding()),
                    entry(7, seq.as_ref().unwrap_or(&cx.dummy).as_entire_binding()),
                    // state_in as vec4s (step.wgsl reads it only when H % 4 == 0)
                    entry(
                        8,
                        if h.is_multiple_of(4) {
                            &pair[p]
                        } else {
                            &cx.dummy_vec4
                        }
                        .as_entire_binding(),
                    ),
                ],
            })
        });
        let step_key = |cell_id: u32| StepKey {
            activation: w.config.activation,
            recurrent_activation: w.config.recurrent_activation,
            zero_output_for_mask: w.config.zero_output_for_mask,
            has_mask: input.mask.is_some(),
            write_sequence: seq_needed,
            whole_sequence,
            cell: (cell_id, cell.gates() as u32),
        };
        // The step's pipelines: one, or a GRU without reset_after's reset and candidate
        // dispatches (the same bindings and parameters).
        let step_pipelines = match cell {
            Cell::Lstm => vec![cx.kernels.step(cx.device(), step_key(CELL_LSTM))?],
            Cell::Gru { reset_after: true } => {
                vec![cx.kernels.step(cx.device(), step_key(CELL_GRU))?]
            }
            // (sequence.wgsl runs both halves in one dispatch)
            Cell::Gru { reset_after: false } if whole_sequence => {
                vec![cx.kernels.step(cx.device(), step_key(CELL_GRU_RESET))?]
            }
            Cell::Gru { reset_after: false } => vec![
                cx.kernels.step(cx.device(), step_key(CELL_GRU_RESET))?,
                cx.kernels.step(cx.device(), step_key(CELL_GRU_CANDIDATE))?,
            ],
            Cell::SimpleRnn => vec![cx.kernels.step(cx.device(), step_key(CELL_SIMPLE_RNN))?],
        };
        let step_groups = if whole_sequence {
            (1, 1)
        } else {
            cx.check_groups(
                &format!("LSTM layer {name} (batch {batch}, {h} units)"),
                (h.div_ceil(STEP_THREADS), batch.div_ceil(STEP_ROWS)),
            )?
        };
        let proj_pipeline = cx.pipeline(Kernel::Projection)?;
        cx.count_projection_chunks(chunks.len());
        // Recurrent step k reads state buffer k % 2 and writes the other.
        let mut dispatched = 0;
        for (off, groups, recurrent) in chunks {
            cx.dispatch(&proj_pipeline, &proj_bind, &[off], groups);
            cx.mark(Phase::Projection);
            for off in recurrent {
                for pipeline in &step_pipelines {
                    cx.dispatch(pipeline, &step_bind[dispatched % 2], &[off], step_groups);
                }
                dispatched += 1;
            }
            cx.mark(Phase::Steps);
        }
        let pair = &cx.states.dirs[self.state];
        let state = pair[dispatched % 2].clone();
        if w.config.stateful && dispatched % 2 == 1 {
            // The next call reads the carried state from buffer 0.
            let (from, to) = (pair[1].clone(), pair[0].clone());
            cx.carry(&from, &to);
        }
        Ok(DirOutputs {
            out: seq.unwrap_or(last),
            state,
        })
    }

    /// Puts this direction's starting state in buffer 0 of its pair when the plan must:
    /// the `initial_state` tensors `init` ([h, c] or [h]), or zeros when the layer already
    /// ran in this plan (a layer called twice). Otherwise the forward's upload (or the carried
    /// state of a stateful layer, or the clear before the pass) is the start.
    fn start_state(&self, cx: &mut PlanContext<'_, '_>, init: &[Tensor]) -> Result<()> {
        let c = &self.weights.config;
        let (b, h) = (cx.batch, c.units);
        let pair0 = cx.states.dirs[self.state][0].clone();
        let what = format!("initial_state of layer {}", c.name);
        if !init.is_empty() {
            if init.len() != c.cell.states() {
                return Err(LstmError::invalid(
                    &what,
                    format!("expected {} tensors, got {}", c.cell.states(), init.len()),
                ));
            }
            for (k, s) in init.iter().enumerate() {
                if s.shape != [b, h] {
                    return Err(LstmError::shape(&what, &[b, h], &s.shape));
                }
                let mut g = Gather::copy(&[b, h]);
                g.out_base = k * b * h;
                cx.gather(&what, &s.buf, &pair0, &g)?;
            }
        } else if cx.planned_states.contains(&self.state) {
            let mut g = Gather::copy(&[2 * b * h]);
            g.in_dims = vec![0];
            let dummy = cx.dummy_vec4.clone();
            cx.gather(&what, &dummy, &pair0, &g)?;
        }
        cx.planned_states.push(self.state);
        Ok(())
    }
}
