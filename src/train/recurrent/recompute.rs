//! Recompute mode: a forward pass that keeps only the states at segment starts, and the
//! backward pass that runs each segment's forward again.

use super::super::dropout::GateMasks;
use super::*;
use crate::config::{Cell, LstmConfig};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::weights::LstmWeights;
use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3};

/// A forward pass in recompute mode: only the states before every `seg`-th processing step
/// (and the call's mask and dropout masks) are kept; [`backward_recomputed`] runs each
/// segment's forward again from its states and takes its backward pass, last segment first.
/// Activation memory: one segment's tape and `2·B·H` values per segment.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoints<T> {
    seg: usize,
    /// `(h, c)` before each segment's first step.
    states: Vec<(Array2<T>, Array2<T>)>,
    mask: Option<Array2<bool>>,
    drop: Option<GateMasks<T>>,
}

/// The time indices of processing steps `s0..s1` (with `go_backwards` the steps run from the
/// range's end).
fn times_of(go_backwards: bool, t: usize, (s0, s1): (usize, usize)) -> std::ops::Range<usize> {
    if go_backwards {
        t - s1..t - s0
    } else {
        s0..s1
    }
}

/// [`forward`] in recompute mode ([`Checkpoints`], segments of `seg` steps): each segment
/// runs on its own from the states the previous one left, its tape dropped; the outputs are
/// [`forward`]'s (a masked step before a segment's first present one repeats the output
/// before it, as in one pass).
pub(crate) fn forward_recomputed<T: Element>(
    (cfg, w): (&LstmConfig, &LstmWeights<T>),
    x: ArrayView3<'_, T>,
    mask: Option<ArrayView2<'_, bool>>,
    init: Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>,
    drop: Option<&GateMasks<T>>,
    seg: usize,
) -> Result<(LstmCall<T>, Checkpoints<T>)> {
    let (b, t, _) = x.dim();
    let h = cfg.units;
    check_inputs(cfg, w.kernel.nrows(), x, mask, init)?;
    let seg = seg.max(1);
    let seg_cfg = LstmConfig {
        return_sequences: true,
        ..cfg.clone()
    };
    // (the output before the first step is zeros whatever the initial state, as Keras's)
    let (mut hs, mut cs) = match init {
        Some((h0, c0)) => (h0.to_owned(), c0.to_owned()),
        None => (Array2::<T>::zeros((b, h)), Array2::<T>::zeros((b, h))),
    };
    let mut last = Array2::<T>::zeros((b, h));
    let mut seq = Array3::<T>::zeros((b, if cfg.return_sequences { t } else { 0 }, h));
    let mut states = Vec::with_capacity(t.div_ceil(seg));
    for s0 in (0..t).step_by(seg) {
        let s1 = (s0 + seg).min(t);
        states.push((hs.clone(), cs.clone()));
        let times = times_of(cfg.go_backwards, t, (s0, s1));
        let xs = x.slice(s![.., times.clone(), ..]);
        let ms = mask.map(|m| m.slice_move(s![.., times.clone()]));
        let (call, _) = forward((&seg_cfg, w), xs, ms, Some((hs.view(), cs.view())), drop)?;
        let mut out = call
            .output
            .into_dimensionality::<ndarray::Ix3>()
            .expect("a sequence");
        let len = s1 - s0;
        for r in 0..b {
            // (the steps before the row's first present one in this segment repeat the
            // output before the segment; a fresh pass would repeat zeros)
            let present = |k: usize| ms.is_none_or(|m| m[[r, time_of(cfg.go_backwards, len, k)]]);
            if !cfg.zero_output_for_mask {
                for k in (0..len).take_while(|&k| !present(k)) {
                    out.slice_mut(s![r, k, ..]).assign(&last.row(r));
                }
            }
            if len > 0 {
                last.row_mut(r).assign(&out.slice(s![r, len - 1, ..]));
            }
        }
        if cfg.return_sequences {
            seq.slice_mut(s![.., s0..s1, ..]).assign(&out);
        }
        (hs, cs) = (call.h, call.c);
    }
    let output = if cfg.return_sequences {
        seq.into_dyn()
    } else {
        last.into_dyn()
    };
    Ok((
        LstmCall {
            output,
            h: hs,
            c: cs,
        },
        Checkpoints {
            seg,
            states,
            mask: mask.map(|m| m.to_owned()),
            drop: drop.cloned(),
        },
    ))
}

/// The backward pass of a [`forward_recomputed`] call: per segment, last first, its forward
/// again from its checkpoint and [`backward`] over it, the state and repeated-output
/// cotangents carried from segment to segment and the weight gradients summed.
pub(crate) fn backward_recomputed<T: Element>(
    (cfg, w): (&LstmConfig, &LstmWeights<T>),
    x: ArrayView3<'_, T>,
    ck: &Checkpoints<T>,
    cot: &LstmCotangents<T>,
) -> Result<LstmGrads<T>> {
    let (b, t, i) = x.dim();
    let h = cfg.units;
    check_cotangents(cfg, b, t, cot)?;
    if ck.states.len() != t.div_ceil(ck.seg) {
        return Err(LstmError::invalid(
            format!("layer {}", cfg.name),
            "the checkpoints are of another call",
        ));
    }
    let seg_cfg = LstmConfig {
        return_sequences: true,
        ..cfg.clone()
    };
    // the output cotangent per processing step (a last-output one at the last step: the
    // same flow back through masked steps)
    let seq_cot = if cfg.return_sequences {
        cot.output
            .view()
            .into_dimensionality::<ndarray::Ix3>()
            .expect("checked above")
            .to_owned()
    } else {
        let mut c = Array3::<T>::zeros((b, t, h));
        if t > 0 {
            c.slice_mut(s![.., t - 1, ..]).assign(
                &cot.output
                    .view()
                    .into_dimensionality::<ndarray::Ix2>()
                    .expect("checked above"),
            );
        }
        c
    };
    let mut dh = cot.h.clone().unwrap_or_else(|| Array2::zeros((b, h)));
    let mut dc = cot.c.clone().unwrap_or_else(|| Array2::zeros((b, h)));
    let mut dy = Array2::<T>::zeros((b, h));
    let mut gk = Array2::<T>::zeros(w.kernel.raw_dim());
    let mut gr = Array2::<T>::zeros(w.recurrent_kernel.raw_dim());
    let mut gb = w.bias.as_ref().map(|b| Array1::<T>::zeros(b.len()));
    let mut gx = Array3::<T>::zeros((b, t, i));
    for (k, s0) in (0..t).step_by(ck.seg).enumerate().rev() {
        let s1 = (s0 + ck.seg).min(t);
        let times = times_of(cfg.go_backwards, t, (s0, s1));
        let xs = x.slice(s![.., times.clone(), ..]);
        let ms = ck.mask.as_ref().map(|m| m.slice(s![.., times.clone()]));
        let (h0, c0) = &ck.states[k];
        let (_, tape) = forward(
            (&seg_cfg, w),
            xs,
            ms,
            Some((h0.view(), c0.view())),
            ck.drop.as_ref(),
        )?;
        let seg_cot = LstmCotangents {
            output: seq_cot.slice(s![.., s0..s1, ..]).to_owned().into_dyn(),
            h: Some(dh),
            c: Some(dc),
        };
        let (g, dy_left) = backward_carry((&seg_cfg, w), xs, &tape, &seg_cot, Some(dy))?;
        gk += &g.kernel;
        gr += &g.recurrent_kernel;
        if let (Some(acc), Some(gb_k)) = (gb.as_mut(), g.bias.as_ref()) {
            *acc += gb_k;
        }
        gx.slice_mut(s![.., times, ..]).assign(&g.x);
        (dh, dc, dy) = (g.h0, g.c0, dy_left);
    }
    if !matches!(cfg.cell, Cell::Lstm) {
        dc.fill(T::zero());
    }
    Ok(LstmGrads {
        kernel: gk,
        recurrent_kernel: gr,
        bias: gb,
        x: gx,
        h0: dh,
        c0: dc,
    })
}
