//! The plan builder of Keras `ConvLSTM1D`/`ConvLSTM2D`: the input convolution of all `B·T`
//! frames in one conv.wgsl dispatch, then per step the recurrent convolution of `h`
//! (conv.wgsl, "same", stride 1) and the cell update (conv_lstm.wgsl), `h` and `c` in place.
//! CPU twin: `ConvLstm` in src/graph/conv_lstm.rs.

use super::conv::{prepare, spatial_shape, ConvWeights};
use super::gather::Gather;
use super::merge::merge_rows;
use super::{Args, GpuStage, PlanContext, Tensor};
use crate::activation::Activation;
use crate::config::MergeMode;
use crate::cpu::reference::StepRule;
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::params::{ConvLstmParams, MergeParams, CONV_LSTM_THREADS};
use crate::gpu::plan::context::{entry, params_binding};
use crate::gpu::stats::Phase;
use crate::graph::Window2;

/// A ConvLSTM layer's weights on the GPU (the Keras kernels `[kh, kw, C, 4F]` and
/// `[kh, kw, F, 4F]` row-major, `kh` = 1 for 1-D; the bias) and its options.
#[derive(Debug)]
pub(crate) struct ConvLstmStage {
    pub name: String,
    pub rank: usize,
    pub filters: usize,
    pub in_channels: usize,
    pub kernel: wgpu::Buffer,
    pub recurrent_kernel: wgpu::Buffer,
    pub bias: Option<wgpu::Buffer>,
    pub win: Window2,
    pub rule: StepRule,
    pub return_sequences: bool,
    pub return_state: bool,
    pub go_backwards: bool,
    /// Writes the sequence in input order (the backward half of a Bidirectional layer).
    pub reverse_output: bool,
}

impl GpuStage for ConvLstmStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let x = args.one(&self.name)?;
        let what = format!("layer {}", self.name);
        let (b, t, hw, cin) = match (self.rank, &x.shape[..]) {
            (1, &[b, t, w, c]) => (b, t, [1, w], c),
            (2, &[b, t, h, w, c]) => (b, t, [h, w], c),
            _ => {
                return Err(LstmError::shape(
                    format!("input of {what}"),
                    &vec![0; self.rank + 3],
                    &x.shape,
                ))
            }
        };
        if cin != self.in_channels {
            let mut want = x.shape.clone();
            *want.last_mut().expect("a shape") = self.in_channels;
            return Err(LstmError::shape(
                format!("input of {what}"),
                &want,
                &x.shape,
            ));
        }
        let f = self.filters;
        let place = self.win.place(hw)?;
        let out_hw = place.out;
        let p = out_hw[0] * out_hw[1];
        // The input convolution of all frames: [B·T·P, 4F].
        let zx = cx.storage(
            &format!("{what} input convolution"),
            (b * t * p * 4 * f * 4) as u64,
            wgpu::BufferUsages::empty(),
        )?;
        let wx = ConvWeights {
            kernel: &self.kernel,
            bias: self.bias.as_ref(),
            channels_per_group: cin,
            groups: 1,
            filters: 4 * f,
        };
        let frames = [b * t, hw[0], hw[1], cin];
        for (pipeline, bind, groups) in prepare(
            cx,
            &what,
            (&x.buf, frames),
            &wx,
            (&self.win, place),
            Activation::Linear,
            &zx,
        )? {
            cx.dispatch(&pipeline, &bind, &[], groups);
        }
        cx.mark(Phase::Projection);
        // The states, the last output and the recurrent convolution's output.
        let state_bytes = (b * p * f * 4) as u64;
        let [h, c, last] = ["h", "c", "last output"].map(|n| {
            cx.storage(
                &format!("{what} {n}"),
                state_bytes,
                wgpu::BufferUsages::COPY_DST,
            )
        });
        let (h, c, last) = (h?, c?, last?);
        cx.clear(&last);
        let state_shape = spatial_shape(self.rank, b, out_hw, f);
        match args.states {
            [] => {
                cx.clear(&h);
                cx.clear(&c);
            }
            [h0, c0] => {
                for (s, dst, n) in [(h0, &h, "h"), (c0, &c, "c")] {
                    let w = format!("initial_state {n} of {what}");
                    if s.shape != state_shape {
                        return Err(LstmError::shape(&w, &state_shape, &s.shape));
                    }
                    cx.gather(&w, &s.buf, dst, &Gather::copy(&[b * p * f]))?;
                }
            }
            _ => {
                return Err(LstmError::invalid(
                    format!("initial_state of {what}"),
                    format!("expected 2 tensors (h, c), got {}", args.states.len()),
                ))
            }
        }
        let zh = cx.storage(
            &format!("{what} recurrent convolution"),
            (b * p * 4 * f * 4) as u64,
            wgpu::BufferUsages::empty(),
        )?;
        let rwin = Window2 {
            size: self.win.size,
            stride: [1, 1],
            dilation: [1, 1],
            padding: "same".into(),
        };
        let rplace = rwin.place(out_hw)?;
        let wh = ConvWeights {
            kernel: &self.recurrent_kernel,
            bias: None,
            channels_per_group: f,
            groups: 1,
            filters: 4 * f,
        };
        let recurrent = prepare(
            cx,
            &what,
            (&h, [b, out_hw[0], out_hw[1], f]),
            &wh,
            (&rwin, rplace),
            Activation::Linear,
            &zh,
        )?;
        // The mask the layer runs under, as LSTM's.
        let mask = match args.mask {
            Some(m) => {
                if m.len() != b * t {
                    return Err(LstmError::shape(
                        format!("mask of {what}"),
                        &[b, t],
                        &m.shape,
                    ));
                }
                Some(cx.as_mask(&format!("mask of {what}"), m)?)
            }
            None if !args.states.is_empty() => None,
            None => x.mask.clone(),
        };
        let seq = if self.return_sequences {
            Some(cx.storage(
                &format!("{what} output sequence"),
                (b * t * p * f * 4) as u64,
                wgpu::BufferUsages::empty(),
            )?)
        } else {
            None
        };
        let stride = cx.stride;
        let mut params = Vec::with_capacity(t * stride);
        for s in 0..t {
            let tt = if self.go_backwards { t - 1 - s } else { s };
            let block = ConvLstmParams {
                rows: (b * p) as u32,
                pixels: p as u32,
                filters: f as u32,
                steps: t as u32,
                t: tt as u32,
                s_out: if self.reverse_output { tt } else { s } as u32,
                has_mask: u32::from(mask.is_some()),
                write_sequence: u32::from(seq.is_some()),
            };
            let off = params.len();
            params.extend_from_slice(bytemuck::bytes_of(&block));
            params.resize(off + stride, 0);
        }
        let cell = if t > 0 && b * p * f > 0 {
            let params_buf = cx.uniform("conv_lstm parameters", &params);
            let bind = cx.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("conv_lstm"),
                layout: cx.kernels.layout(Kernel::ConvLstm),
                entries: &[
                    entry(0, params_binding(&params_buf)),
                    entry(1, zx.as_entire_binding()),
                    entry(2, zh.as_entire_binding()),
                    entry(
                        3,
                        mask.as_ref().unwrap_or(&cx.dummy_vec4).as_entire_binding(),
                    ),
                    entry(4, h.as_entire_binding()),
                    entry(5, c.as_entire_binding()),
                    entry(6, last.as_entire_binding()),
                    entry(7, seq.as_ref().unwrap_or(&cx.dummy).as_entire_binding()),
                ],
            });
            let flag = |v: bool| if v { 1.0 } else { 0.0 };
            let pipeline = cx.kernels.pipeline(
                cx.device(),
                Kernel::ConvLstm,
                &[
                    ("ACTIVATION", f64::from(self.rule.activation.id())),
                    (
                        "RECURRENT_ACTIVATION",
                        f64::from(self.rule.recurrent_activation.id()),
                    ),
                    ("ZERO_OUTPUT", flag(self.rule.zero_output_for_mask)),
                ],
            )?;
            let groups = cx.grid(&what, b * p * f, CONV_LSTM_THREADS)?;
            Some((pipeline, bind, groups))
        } else {
            None
        };
        if let Some((pipeline, bind, groups)) = &cell {
            for s in 0..t {
                for (rp, rb, rg) in &recurrent {
                    cx.dispatch(rp, rb, &[], *rg);
                }
                cx.dispatch(pipeline, bind, &[(s * stride) as u32], *groups);
            }
        }
        cx.mark(Phase::Steps);
        let first = match seq {
            Some(seq) => {
                let mut shape = vec![b, t];
                shape.extend(&state_shape[1..]);
                Tensor {
                    buf: seq,
                    offset: 0,
                    shape,
                    mask: x.mask.clone(),
                }
            }
            None => Tensor {
                buf: last,
                offset: 0,
                shape: state_shape.clone(),
                mask: None,
            },
        };
        let mut outs = vec![first];
        if self.return_state {
            for buf in [h, c] {
                outs.push(Tensor {
                    buf,
                    offset: 0,
                    shape: state_shape.clone(),
                    mask: None,
                });
            }
        }
        Ok(outs)
    }
}

/// `Bidirectional` around a ConvLSTM layer: both directions as [`ConvLstmStage`] plans them
/// (the backward one writing its sequence in input order), then one merge.wgsl dispatch over
/// the output pixels (`merge_mode: null` returns both outputs as they are). CPU twin:
/// `BiConvLstm` in src/graph/conv_lstm.rs.
#[derive(Debug)]
pub(crate) struct BiConvLstmStage {
    pub name: String,
    pub forward: ConvLstmStage,
    pub backward: ConvLstmStage,
    pub merge: MergeMode,
}

impl GpuStage for BiConvLstmStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let (fs, bs) = match args.states.len() {
            0 => (&args.states[..0], &args.states[..0]),
            4 => args.states.split_at(2),
            n => {
                return Err(LstmError::invalid(
                    format!("initial_state of layer {}", self.name),
                    format!("expected 4 tensors (forward h, c, backward h, c), got {n}"),
                ))
            }
        };
        let half = |states| Args {
            inputs: args.inputs,
            states,
            mask: args.mask,
            scalars: args.scalars,
            kwargs: args.kwargs,
        };
        let mut y = self.forward.plan(cx, &half(fs))?;
        let mut y_rev = self.backward.plan(cx, &half(bs))?;
        let (states_f, states_b) = (y.split_off(1), y_rev.split_off(1));
        let (y, y_rev) = (y.remove(0), y_rev.remove(0));
        let mut outs = if self.merge == MergeMode::None {
            vec![y, y_rev]
        } else {
            let f = self.forward.filters;
            let rows = y.len() / f.max(1);
            let width = if self.merge == MergeMode::Concat {
                2 * f
            } else {
                f
            };
            let buf = merge_rows(
                cx,
                self.merge,
                (&y.buf, &y_rev.buf),
                MergeParams {
                    batch: rows as u32,
                    steps: 1,
                    units_fwd: f as u32,
                    units_bwd: f as u32,
                    flip: 0,
                    width: width as u32,
                    _pad0: 0,
                    _pad1: 0,
                },
            )?;
            let mut shape = y.shape.clone();
            *shape.last_mut().expect("a shape") = width;
            vec![Tensor {
                buf,
                offset: 0,
                shape,
                mask: y.mask,
            }]
        };
        outs.extend(states_f);
        outs.extend(states_b);
        Ok(outs)
    }
}
