//! `ConvLSTM1D` and `ConvLSTM2D` (Keras 3's `ConvLSTM` over a `ConvLSTMCell`, channels_last)
//! on the CPU: an LSTM whose input and recurrent transformations are convolutions. Per step
//! `t`, on `[B, T, (H,) W, C]` frames:
//!
//! ```text
//! z = conv(x_t, kernel, strides, padding, dilation) + bias
//!   + conv(h_{t-1}, recurrent_kernel, strides 1, padding "same")    [B, (OH,) OW, 4F]
//! i, f, g, o = z's four blocks of F channels
//! c_t = rec_act(f) * c_{t-1} + rec_act(i) * act(g);  h_t = rec_act(o) * act(c_t)
//! ```
//!
//! which is the LSTM cell update (`cpu::reference::cell_update`) on each output pixel's
//! `4F` pre-activations: the same gate order, mask rule (a masked step keeps the states and
//! repeats the last output) and `go_backwards` order as `LSTM`. The input convolution runs
//! on all `B·T` frames at once before the loop. GPU twin: `ConvLstmStage`
//! (gpu/plan/conv_lstm.rs).

use super::conv::{bias_weight, channels_last, spatial_kernel, unspatial, Conv, Window2};
use super::ops::{bool_mask, fitting_mask, stage, Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::activation::Activation;
use crate::config::MergeMode;
use crate::cpu::reference::{cell_update, StepRule};
use crate::error::{LstmError, Result};
use crate::gpu::plan::{BiConvLstmStage, ConvLstmStage};
use ndarray::{Array2, Array4, ArrayD, IxDyn};
use serde_json::Value as Json;

/// A ConvLSTM layer: its input and recurrent convolutions (each with all four gates'
/// `4F` filters) and the LSTM step rule.
#[derive(Debug, Clone)]
pub(crate) struct ConvLstm {
    pub(super) name: String,
    pub(super) rank: usize,
    pub(super) filters: usize,
    /// kernel `[kh, kw, C, 4F]`, the bias, the layer's strides, padding and dilation.
    pub(super) input: Conv,
    /// recurrent kernel `[kh, kw, F, 4F]`, no bias, strides 1, padding "same".
    pub(super) recurrent: Conv,
    pub(super) rule: StepRule,
    pub(super) return_sequences: bool,
    pub(super) return_state: bool,
    pub(super) go_backwards: bool,
    /// Writes the output sequence in input order (step `t` at index `t`) instead of the
    /// processing order: the backward half of a Bidirectional layer, whose sequence Keras
    /// flips back before the merge.
    pub(super) reverse_output: bool,
}

fn flag(cfg: &Json, key: &str) -> bool {
    cfg.get(key).and_then(Json::as_bool).unwrap_or(false)
}

/// Builds `ConvLSTM1D`/`ConvLSTM2D` from its config and weights (kernel, recurrent kernel,
/// bias).
pub(super) fn build(
    class: &str,
    cfg: &Json,
    name: &str,
    weights: Vec<ArrayD<f32>>,
) -> Result<ConvLstm> {
    channels_last(cfg)?;
    let rank = if class == "ConvLSTM1D" { 1 } else { 2 };
    if flag(cfg, "stateful") {
        return Err(LstmError::unsupported(
            "stateful",
            format!("true on {class} layer {name} (only LSTM, GRU and SimpleRNN carry states across calls)"),
        ));
    }
    let filters = match cfg.get("filters").and_then(Json::as_u64) {
        Some(f) if f >= 1 => f as usize,
        _ => {
            return Err(LstmError::bad_config(
                "filters",
                format!("layer {name}: expected a positive int"),
            ))
        }
    };
    let win = Window2::from_config(cfg, rank, "kernel_size", false)?;
    let act =
        |key: &str, default: &str| crate::config::activation_from_keras(key, cfg.get(key), default);
    let rule = StepRule {
        activation: act("activation", "tanh")?,
        recurrent_activation: act("recurrent_activation", "sigmoid")?,
        zero_output_for_mask: flag(cfg, "zero_output_for_mask"),
    };
    let use_bias = cfg.get("use_bias").and_then(Json::as_bool).unwrap_or(true);
    let mut w = weights.into_iter();
    let mut kernel = |what: &str| -> Result<Array4<f32>> {
        let k = spatial_kernel(w.next(), rank, &format!("{name}/{what}"))?;
        let (kh, kw, _, n) = k.dim();
        if [kh, kw] != win.size || n != 4 * filters {
            return Err(LstmError::shape(
                format!("{name}/{what}"),
                &[win.size[0], win.size[1], k.dim().2, 4 * filters],
                k.shape(),
            ));
        }
        Ok(k)
    };
    let kernel_x = kernel("kernel")?;
    let kernel_h = kernel("recurrent_kernel")?;
    if kernel_h.dim().2 != filters {
        return Err(LstmError::shape(
            format!("{name}/recurrent_kernel"),
            &[win.size[0], win.size[1], filters, 4 * filters],
            kernel_h.shape(),
        ));
    }
    let bias = use_bias
        .then(|| bias_weight(w.next(), 4 * filters, &format!("{name}/bias")))
        .transpose()?;
    let recurrent_win = Window2 {
        size: win.size,
        stride: [1, 1],
        dilation: [1, 1],
        padding: "same".into(),
    };
    Ok(ConvLstm {
        name: name.to_string(),
        rank,
        filters,
        input: Conv {
            name: format!("{name} (input convolution)"),
            rank: 2,
            kernel: kernel_x,
            bias,
            activation: Activation::Linear,
            win,
            groups: 1,
        },
        recurrent: Conv {
            name: format!("{name} (recurrent convolution)"),
            rank: 2,
            kernel: kernel_h,
            bias: None,
            activation: Activation::Linear,
            win: recurrent_win,
            groups: 1,
        },
        rule,
        return_sequences: flag(cfg, "return_sequences"),
        return_state: flag(cfg, "return_state"),
        go_backwards: flag(cfg, "go_backwards"),
        reverse_output: false,
    })
}

impl ConvLstm {
    /// `(B, T, [H, W], C)` of the input (`H` = 1 for 1-D), or an error naming the layer.
    fn dims(&self, shape: &[usize]) -> Result<(usize, usize, [usize; 2], usize)> {
        match (self.rank, shape) {
            (1, &[b, t, w, c]) => Ok((b, t, [1, w], c)),
            (2, &[b, t, h, w, c]) => Ok((b, t, [h, w], c)),
            _ => Err(LstmError::shape(
                format!("input of layer {}", self.name),
                &vec![0; self.rank + 3],
                shape,
            )),
        }
    }

    /// A per-frame shape `[n, (OH,) OW, ch]` of this layer's rank.
    fn frame_shape(&self, n: usize, [oh, ow]: [usize; 2], ch: usize) -> Vec<usize> {
        if self.rank == 1 {
            vec![n, ow, ch]
        } else {
            vec![n, oh, ow, ch]
        }
    }

    /// The shape of each state `[B, (OH,) OW, F]` for an input of `shape`.
    pub(super) fn state_shape(&self, shape: &[usize]) -> Result<Vec<usize>> {
        let (b, _, hw, _) = self.dims(shape)?;
        Ok(self.frame_shape(b, self.out_size(hw)?, self.filters))
    }

    /// The output spatial size of frames of size `hw`.
    pub(super) fn out_size(&self, hw: [usize; 2]) -> Result<[usize; 2]> {
        Ok(self.input.win.place(hw)?.out)
    }
}

impl Op for ConvLstm {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        let x = match inputs {
            [x] => *x,
            _ => {
                return Err(LstmError::invalid(
                    format!("layer {}", self.name),
                    "takes one input",
                ))
            }
        };
        let (b, t, hw, cin) = self.dims(x.data.shape())?;
        let f = self.filters;
        if cin != self.input.kernel.dim().2 {
            let mut want = x.data.shape().to_vec();
            *want.last_mut().expect("a shape") = self.input.kernel.dim().2;
            return Err(LstmError::shape(
                format!("input of layer {}", self.name),
                &want,
                x.data.shape(),
            ));
        }
        let out_hw = self.out_size(hw)?;
        let p = out_hw[0] * out_hw[1];
        // The input convolution of every frame at once: [B·T·P, 4F].
        let frames = Value {
            data: x
                .data
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&[b * t, hw[0], hw[1], cin]))
                .expect("the same values"),
            mask: None,
        };
        let none = serde_json::Map::new();
        let plain = Extra {
            states: Vec::new(),
            mask: None,
            scalars: &[],
            kwargs: &none,
        };
        let zx = self.input.call(&[&frames], &plain)?.remove(0).data;
        let zx = zx
            .into_shape_with_order((b * t * p, 4 * f))
            .expect("frames x filters");
        // The mask the layer runs under (as LSTM's: an explicit mask=, else the input's
        // unless initial_state tensors were given).
        let mask = match extra.mask {
            Some(m) => Some(bool_mask(m, &self.name)?),
            None if !extra.states.is_empty() => None,
            None => x.mask.clone(),
        };
        fitting_mask(mask.as_ref(), (b, t), &self.name)?;
        let state_shape = self.state_shape(x.data.shape())?;
        let mut h = Array2::<f32>::zeros((b * p, f));
        let mut c = Array2::<f32>::zeros((b * p, f));
        match extra.states[..] {
            [] => {}
            [h0, c0] => {
                for (s, dst, what) in [(h0, &mut h, "h"), (c0, &mut c, "c")] {
                    if s.data.shape() != state_shape.as_slice() {
                        return Err(LstmError::shape(
                            format!("initial_state {what} of layer {}", self.name),
                            &state_shape,
                            s.data.shape(),
                        ));
                    }
                    dst.assign(
                        &s.data
                            .as_standard_layout()
                            .into_owned()
                            .into_shape_with_order((b * p, f))
                            .expect("the same values"),
                    );
                }
            }
            _ => {
                return Err(LstmError::invalid(
                    format!("initial_state of layer {}", self.name),
                    format!("expected 2 tensors (h, c), got {}", extra.states.len()),
                ))
            }
        }
        let mut last = Array2::<f32>::zeros((b * p, f));
        let mut seq = self
            .return_sequences
            .then(|| Array4::<f32>::zeros((b, t, p, f)));
        let mut z = vec![0f32; 4 * f];
        // h as the recurrent convolution's input [B, OH, OW, F], updated in place
        let mut hv = Value {
            data: h
                .into_shape_with_order(IxDyn(&[b, out_hw[0], out_hw[1], f]))
                .expect("the state's values"),
            mask: None,
        };
        for s in 0..t {
            let tt = if self.go_backwards { t - 1 - s } else { s };
            let zh = self.recurrent.call(&[&hv], &plain)?.remove(0).data;
            let hs = hv.data.as_slice_mut().expect("a standard layout");
            let zh = zh
                .into_shape_with_order((b * p, 4 * f))
                .expect("pixels x filters");
            for r in 0..b * p {
                let (bi, px) = (r / p, r % p);
                let zxr = zx.row((bi * t + tt) * p + px);
                for (k, v) in z.iter_mut().enumerate() {
                    *v = zxr[k] + zh[[r, k]];
                }
                let present = mask.as_ref().is_none_or(|m| m[[bi, tt]]);
                cell_update(
                    self.rule,
                    &mut z,
                    &mut hs[r * f..(r + 1) * f],
                    c.row_mut(r).as_slice_mut().expect("a standard row"),
                    last.row_mut(r).as_slice_mut().expect("a standard row"),
                    present,
                );
                if let Some(seq) = seq.as_mut() {
                    let at = if self.reverse_output { tt } else { s };
                    seq.slice_mut(ndarray::s![bi, at, px, ..])
                        .assign(&last.row(r));
                }
            }
        }
        let h = hv
            .data
            .into_shape_with_order((b * p, f))
            .expect("the state's values");
        let as_frames = |a: Array2<f32>| {
            let y = a
                .into_shape_with_order((b, out_hw[0], out_hw[1], f))
                .expect("pixels x filters");
            unspatial(y, self.rank)
        };
        let first = match seq {
            Some(seq) => {
                let mut shape = vec![b, t];
                shape.extend(&state_shape[1..]);
                Value {
                    data: seq
                        .into_shape_with_order(IxDyn(&shape))
                        .expect("the sequence"),
                    mask: x.mask.clone(),
                }
            }
            None => Value {
                data: as_frames(last),
                mask: None,
            },
        };
        let mut outs = vec![first];
        if self.return_state {
            outs.push(Value {
                data: as_frames(h),
                mask: None,
            });
            outs.push(Value {
                data: as_frames(c),
                mask: None,
            });
        }
        Ok(outs)
    }

    fn params(&self) -> usize {
        self.input.kernel.len()
            + self.recurrent.kernel.len()
            + self.input.bias.as_ref().map_or(0, |b| b.len())
    }

    fn is_recurrent(&self) -> bool {
        true
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(self.stage(up)?)
    }
}

impl ConvLstm {
    /// This layer's GPU stage, its weights uploaded by `up`.
    fn stage(&self, up: &mut Uploader<'_>) -> Result<ConvLstmStage> {
        let floats = |a: &Array4<f32>| a.iter().copied().collect::<Vec<f32>>();
        Ok(ConvLstmStage {
            name: self.name.clone(),
            rank: self.rank,
            filters: self.filters,
            in_channels: self.input.kernel.dim().2,
            kernel: up.floats(
                &format!("{}/kernel", self.name),
                &floats(&self.input.kernel),
            )?,
            recurrent_kernel: up.floats(
                &format!("{}/recurrent_kernel", self.name),
                &floats(&self.recurrent.kernel),
            )?,
            bias: self
                .input
                .bias
                .as_ref()
                .map(|b| up.floats(&format!("{}/bias", self.name), &b.to_vec()))
                .transpose()?,
            win: self.input.win.clone(),
            rule: self.rule,
            return_sequences: self.return_sequences,
            return_state: self.return_state,
            go_backwards: self.go_backwards,
            reverse_output: self.reverse_output,
        })
    }
}

/// `Bidirectional(ConvLSTM1D|ConvLSTM2D)`: the layer run forward and a copy of it (or the
/// config's `backward_layer`) run last step first, both under the call's mask, their
/// outputs merged as Keras's `Bidirectional` merges them (concat on the channel axis, sum,
/// mul, ave, or two outputs for `merge_mode: null`; with `return_state` the forward `h, c`
/// then the backward `h, c` follow). Keras forces `zero_output_for_mask` to
/// `return_sequences` on both; `initial_state` takes four tensors, the forward pair first.
/// The backward half writes its sequence in input order (Keras's flip before the merge).
/// GPU twin: `BiConvLstmStage` (gpu/plan/conv_lstm.rs).
#[derive(Debug, Clone)]
pub(crate) struct BiConvLstm {
    name: String,
    forward: ConvLstm,
    backward: ConvLstm,
    merge: MergeMode,
}

/// Builds `Bidirectional` around a ConvLSTM layer from the wrapper's config and its weights
/// (the forward layer's, then the backward layer's).
pub(super) fn build_bidirectional(
    cfg: &Json,
    name: &str,
    weights: Vec<ArrayD<f32>>,
) -> Result<BiConvLstm> {
    let merge = MergeMode::from_keras(cfg.get("merge_mode").unwrap_or(&Json::Null))?;
    let null = Json::Null;
    let layer = cfg.get("layer").unwrap_or(&null);
    fn class(l: &Json) -> &str {
        l.get("class_name").and_then(Json::as_str).unwrap_or("")
    }
    let fcfg = layer.get("config").unwrap_or(&null);
    let (bclass, bcfg) = match cfg.get("backward_layer") {
        None | Some(Json::Null) => {
            let mut c = fcfg.clone();
            if let Some(o) = c.as_object_mut() {
                o.insert(
                    "go_backwards".into(),
                    Json::Bool(!flag(fcfg, "go_backwards")),
                );
            }
            (class(layer), c)
        }
        Some(b) => (class(b), b.get("config").unwrap_or(&null).clone()),
    };
    if bclass != class(layer) {
        return Err(LstmError::unsupported(
            "backward_layer.class_name",
            format!("{bclass} (layer {name} wraps {})", class(layer)),
        ));
    }
    for key in ["stateful", "return_sequences", "return_state"] {
        if flag(fcfg, key) != flag(&bcfg, key) {
            return Err(LstmError::bad_config(
                key,
                format!("layer {name}: the forward and backward layers differ"),
            ));
        }
    }
    if flag(fcfg, "go_backwards") == flag(&bcfg, "go_backwards") {
        return Err(LstmError::bad_config(
            "go_backwards",
            format!("layer {name}: the forward and backward layers must differ"),
        ));
    }
    let per = |c: &Json| 2 + usize::from(c.get("use_bias").and_then(Json::as_bool).unwrap_or(true));
    let (nf, nb) = (per(fcfg), per(&bcfg));
    if weights.len() != nf + nb {
        return Err(LstmError::invalid(
            format!("weights of layer {name}"),
            format!(
                "expected {} arrays (forward then backward), got {}",
                nf + nb,
                weights.len()
            ),
        ));
    }
    let mut w = weights;
    let wb = w.split_off(nf);
    let mut forward = build(class(layer), fcfg, &format!("{name}/forward"), w)?;
    let mut backward = build(bclass, &bcfg, &format!("{name}/backward"), wb)?;
    for d in [&mut forward, &mut backward] {
        d.rule.zero_output_for_mask = d.return_sequences;
    }
    backward.reverse_output = true;
    Ok(BiConvLstm {
        name: name.to_string(),
        forward,
        backward,
        merge,
    })
}

impl BiConvLstm {
    /// The shape of each of the four states for an input of `shape`.
    #[cfg(test)]
    pub(super) fn state_shape(&self, shape: &[usize]) -> Result<Vec<usize>> {
        self.forward.state_shape(shape)
    }
}

impl Op for BiConvLstm {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        let (fs, bs) = match extra.states.len() {
            0 => (Vec::new(), Vec::new()),
            4 => (extra.states[..2].to_vec(), extra.states[2..].to_vec()),
            n => {
                return Err(LstmError::invalid(
                    format!("initial_state of layer {}", self.name),
                    format!("expected 4 tensors (forward h, c, backward h, c), got {n}"),
                ))
            }
        };
        let half = |states| Extra {
            states,
            mask: extra.mask,
            scalars: extra.scalars,
            kwargs: extra.kwargs,
        };
        let y = self.forward.call(inputs, &half(fs))?;
        let y_rev = self.backward.call(inputs, &half(bs))?;
        let mask = y[0].mask.clone();
        let data = |v: Vec<Value>| v.into_iter().map(|v| v.data).collect();
        let merged = crate::network::merge_directions(self.merge, false, data(y), data(y_rev));
        let outputs = if self.merge == MergeMode::None { 2 } else { 1 };
        Ok(merged
            .into_iter()
            .enumerate()
            .map(|(k, data)| Value {
                data,
                mask: if k < outputs { mask.clone() } else { None },
            })
            .collect())
    }

    fn params(&self) -> usize {
        self.forward.params() + self.backward.params()
    }

    fn is_recurrent(&self) -> bool {
        true
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(BiConvLstmStage {
            name: self.name.clone(),
            forward: self.forward.stage(up)?,
            backward: self.backward.stage(up)?,
            merge: self.merge,
        })
    }
}
