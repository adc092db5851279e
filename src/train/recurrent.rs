//! Backpropagation through time for one `LSTM`, `GRU` (both forms) or `SimpleRNN` layer on
//! the CPU, with Keras's semantics: the forward pass of `cpu::reference` and `cpu::cells`
//! (gate orders i, f, c, o and z, r, h; a masked step keeps the states and repeats the last
//! output, or gives zeros with `zero_output_for_mask`; `go_backwards` processes the last
//! step first and returns the outputs in that order), recorded step by step, then the
//! steps in reverse. Per present step, with `dh` the state's cotangent plus the output's:
//!
//! ```text
//! LSTM:       do = dh·act(c);  dc += dh·o·act'(c);  di = dc·g;  dg = dc·i;  df = dc·c_prev
//!             dc_prev = dc·f;  dz = [di·rec'(z_i), df·rec'(z_f), dg·act'(z_g), do·rec'(z_o)]
//! GRU:        h = z·h_prev + (1 - z)·hh;  dz_g = dh·(h_prev - hh);  dhh = dh·(1 - z)
//!   reset_after:  hh = act(x_h + r·(h U_h + b_h));  d(h U + b) = [dz, dr, dhh'·r]
//!   otherwise:    hh = act(x_h + (r·h_prev) U_h);   d(r·h_prev) = dhh' U_hᵀ
//! SimpleRNN:  h = act(x W + h_prev U + b);  da = dh·act'(a)
//! all:        dW += x_tᵀ dz;  dU += h_prevᵀ d(rec);  db += Σ dz;  dx_t = dz Wᵀ
//!             dh_prev = d(rec) Uᵀ (+ dh·z for a GRU)
//! masked step: dh, dc pass to the previous step; the output's cotangent passes to the
//!             previous output (Keras repeats it) unless zero_output_for_mask
//! ```
//!
//! per batch row (rows are masked apart). The gradients of the initial states are the `dh`,
//! `dc` left after the first step. Activation memory, per row and step (the tape, by time
//! index): an LSTM's pre-activations (its recurrent product added into the input
//! projection), gates, `h` and `c` before, `c` and `act(c)` after (`(2G + 4)·H = 12H`
//! values); a GRU's input and recurrent sides apart, gates and `h` before (`10H`); a
//! SimpleRNN's pre-activation, output and `h` before (`3H`). The step loops run blocks of
//! rows side by side on the cores.

use super::activation::{derivative_at, derivative_slice};
use super::dropout::GateMasks;
use crate::config::{Cell, LstmConfig};
use crate::cpu::reference::{matmul, matmul_serial, project_inputs};
use crate::cpu::Lstm;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::weights::LstmWeights;
use ndarray::{
    s, Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3,
    Axis,
};

/// The cotangents of an LSTM call's outputs: of the output (`[B, T, H]` with
/// `return_sequences`, else `[B, H]`) and, for `return_state`, of the final `h` and `c`.
#[derive(Debug, Clone)]
pub struct LstmCotangents<T> {
    /// dL/d(output), the shape of the output.
    pub output: ndarray::ArrayD<T>,
    /// dL/d(final h), `[B, H]` (zeros when absent).
    pub h: Option<Array2<T>>,
    /// dL/d(final c), `[B, H]`.
    pub c: Option<Array2<T>>,
}

/// The gradients of an LSTM call: every weight (Keras's shapes), the input and the initial
/// states.
#[derive(Debug, Clone, PartialEq)]
pub struct LstmGrads<T> {
    /// `[I, 4H]`.
    pub kernel: Array2<T>,
    /// `[H, 4H]`.
    pub recurrent_kernel: Array2<T>,
    /// `[4H]` when the layer has a bias.
    pub bias: Option<Array1<T>>,
    /// `[B, T, I]`.
    pub x: Array3<T>,
    /// `[B, H]` (the initial h; zeros were used when none was given).
    pub h0: Array2<T>,
    /// `[B, H]`.
    pub c0: Array2<T>,
}

/// What the forward pass keeps for the backward pass, by time index (`[B, T, ·]`, row `r`
/// and time `t` at `[r, t]`, whatever the processing order).
#[derive(Debug, Clone)]
pub(crate) struct LstmTape<T> {
    /// The pre-activations `[B, T, G·H]`: for an LSTM and a SimpleRNN the whole `x W + b +
    /// h U` (each step's recurrent product accumulated into the input projection); for a
    /// GRU the input side `x W + b`.
    pre: Array3<T>,
    /// A GRU's recurrent side `[B, T, G·H]`: `h U + b_rec` (reset_after) or `[h U_zr, (r·h)
    /// U_h]` (otherwise); empty for the other cells.
    zh: Array3<T>,
    /// `h` before each step, `[B, T, H]`.
    h_prev: Array3<T>,
    /// The activated gates `[B, T, G·H]` (LSTM i, f, g, o; GRU z, r, candidate; SimpleRNN
    /// h) of the present rows.
    post: Array3<T>,
    /// `c` before each step and `act(c)` after it (LSTM; empty otherwise), `[B, T, H]`.
    c_prev: Array3<T>,
    act_c: Array3<T>,
    /// `c` after each step (LSTM), for `act'(c)` where it needs the argument.
    c: Array3<T>,
    /// The mask in processing order, `[B, T]` (all true without a mask).
    present: Array2<bool>,
    /// The per-gate dropout masks of a call in training mode with `recurrent_dropout`.
    drop: Option<GateMasks<T>>,
}

/// The outputs of an LSTM call: the output (`[B, T, H]` or `[B, H]`) and the final states.
#[derive(Debug, Clone, PartialEq)]
pub struct LstmCall<T> {
    /// The output.
    pub output: ndarray::ArrayD<T>,
    /// The final h, `[B, H]`.
    pub h: Array2<T>,
    /// The final c, `[B, H]` (zeros for a GRU or SimpleRNN).
    pub c: Array2<T>,
}

/// The time index of processing step `s`.
pub(crate) fn time_of(go_backwards: bool, t: usize, s: usize) -> usize {
    if go_backwards {
        t - 1 - s
    } else {
        s
    }
}

/// The recurrent bias of a GRU with reset_after (the `G·H` values after the input bias).
fn recurrent_bias<T: Element>(w: &LstmWeights<T>, n: usize) -> Option<ArrayView1<'_, T>> {
    w.bias
        .as_ref()
        .filter(|b| b.len() == 2 * n)
        .map(|b| b.slice(s![n..]))
}

/// `x` (`[B, T, I]`) times the per-row mask `m` (`[B, I]`) at every step.
fn masked_steps<T: Element>(x: ArrayView3<'_, T>, m: &Array2<T>) -> Array3<T> {
    let mut out = x.as_standard_layout().into_owned();
    out.zip_mut_with(&m.view().insert_axis(Axis(1)), |a, &k| *a = *a * k);
    out
}

/// `x W + b` (`[B·T, G·H]`) with each gate block's columns reading `x` times that block's
/// mask (`masks[k]`, `[B, I]`): Keras's implementation 1 under input dropout.
fn project_gates<T: Element>(
    x: ArrayView3<'_, T>,
    w: &LstmWeights<T>,
    masks: &[Array2<T>],
) -> Array2<T> {
    let (b, t, i) = x.dim();
    let n = w.kernel.ncols();
    let h = n / masks.len();
    let mut proj = match &w.bias {
        Some(bias) => bias
            .slice(s![..n])
            .broadcast((b * t, n))
            .expect("bias is [G·H]")
            .to_owned(),
        None => Array2::zeros((b * t, n)),
    };
    for (k, m) in masks.iter().enumerate() {
        let xk = masked_steps(x, m)
            .into_shape_with_order((b * t, i))
            .expect("[B, T, I] reshapes to [B·T, I]");
        matmul(
            xk.view(),
            w.kernel.slice(s![.., k * h..(k + 1) * h]),
            proj.slice_mut(s![.., k * h..(k + 1) * h]),
            w.bias.is_some(),
        );
    }
    proj
}

/// `zh[:, blocks] = (h ⊙ R_k) U_k` (`+=` with `accumulate`) for the gate blocks `blocks`
/// (`R_k` the recurrent dropout mask of block `k`; `h` itself without masks).
fn recurrent_blocks<T: Element>(
    hs: ArrayView2<'_, T>,
    u: ArrayView2<'_, T>,
    mut zh: ndarray::ArrayViewMut2<'_, T>,
    drop: Option<&GateMasks<T>>,
    blocks: std::ops::Range<usize>,
    (h, accumulate): (usize, bool),
) {
    match drop {
        None => matmul_serial(
            hs,
            u.slice(s![.., blocks.start * h..blocks.end * h]),
            zh.slice_mut(s![.., blocks.start * h..blocks.end * h]),
            accumulate,
        ),
        Some(d) => {
            for k in blocks {
                let hk = &hs * &d.recurrent[k];
                matmul_serial(
                    hk.view(),
                    u.slice(s![.., k * h..(k + 1) * h]),
                    zh.slice_mut(s![.., k * h..(k + 1) * h]),
                    accumulate,
                );
            }
        }
    }
}

/// One row block's share of a forward pass: its rows of every array (`[rows, T, ·]` or
/// `[rows, ·]`; a cell's unused arrays are `[rows, 0, 0]`).
struct ForwardRows<'a, T> {
    pre: ArrayViewMut3<'a, T>,
    zh: ArrayViewMut3<'a, T>,
    h_prev: ArrayViewMut3<'a, T>,
    post: ArrayViewMut3<'a, T>,
    c_prev: ArrayViewMut3<'a, T>,
    act_c: ArrayViewMut3<'a, T>,
    c: ArrayViewMut3<'a, T>,
    /// `[rows, T, H]` with `return_sequences`, else `[rows, 0, H]`.
    seq: ArrayViewMut3<'a, T>,
    hs: ArrayViewMut2<'a, T>,
    cs: ArrayViewMut2<'a, T>,
    last: ArrayViewMut2<'a, T>,
    /// `[rows, T]` by processing step.
    present: ArrayViewMut2<'a, bool>,
    mask: Option<ArrayView2<'a, bool>>,
    drop: Option<GateMasks<T>>,
}

/// The rows per block of a call's step loops and whether they run on the cores side by
/// side: rows are independent within a step, so blocks of rows run the whole sequence on
/// their own; below `STEP_PARALLEL_MIN_MACS` per step a call stays on one thread.
fn row_blocks(b: usize, h: usize, n: usize) -> usize {
    const STEP_PARALLEL_MIN_MACS: usize = 1 << 15;
    const MIN_ROWS: usize = 4;
    let threads = rayon::current_num_threads();
    if threads < 2 || b * h * n < STEP_PARALLEL_MIN_MACS || b < 2 * MIN_ROWS {
        return b.max(1);
    }
    b.div_ceil(threads.min(b / MIN_ROWS)).max(1)
}

/// `a`'s blocks of `rows` rows along axis 0.
fn blocks_mut<'a, T, D: ndarray::RemoveAxis>(
    a: &'a mut ndarray::Array<T, D>,
    rows: usize,
) -> std::vec::IntoIter<ndarray::ArrayViewMut<'a, T, D>> {
    a.axis_chunks_iter_mut(Axis(0), rows)
        .collect::<Vec<_>>()
        .into_iter()
}

/// `drop`'s rows `r0..r1`.
fn drop_rows<T: Element>(
    drop: Option<&GateMasks<T>>,
    r0: usize,
    r1: usize,
) -> Option<GateMasks<T>> {
    drop.map(|d| GateMasks {
        input: d.input.as_ref().map(|ms| {
            ms.iter()
                .map(|m| m.slice(s![r0..r1, ..]).to_owned())
                .collect()
        }),
        recurrent: d
            .recurrent
            .iter()
            .map(|m| m.slice(s![r0..r1, ..]).to_owned())
            .collect(),
    })
}

/// The forward pass of `layer` on `x [B, T, I]` under `mask [B, T]` from `init` (h0, c0;
/// zeros when None; c0 unused by a GRU or SimpleRNN), recording what the backward pass
/// needs: every step's `x W + b` as one product first, then per step `h U` and the cell,
/// blocks of rows on the cores side by side ([`row_blocks`]).
/// With `drop` (training mode with `recurrent_dropout`), each gate block reads its own
/// masked input and masked `h` ([`GateMasks`]).
pub(crate) fn forward<T: Element>(
    (cfg, w): (&LstmConfig, &LstmWeights<T>),
    x: ArrayView3<'_, T>,
    mask: Option<ArrayView2<'_, bool>>,
    init: Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>,
    drop: Option<&GateMasks<T>>,
) -> Result<(LstmCall<T>, LstmTape<T>)> {
    let (b, t, i) = x.dim();
    let h = cfg.units;
    let g = cfg.cell.gates();
    let n = g * h;
    check_inputs(cfg, w.kernel.nrows(), x, mask, init)?;
    if let Some(d) = drop {
        let want_in = d.input.as_ref().map_or(g, Vec::len);
        let shapes_ok = d.recurrent.len() == g
            && want_in == g
            && d.recurrent.iter().all(|m| m.dim() == (b, h))
            && d.input.iter().flatten().all(|m| m.dim() == (b, i));
        if !shapes_ok {
            return Err(LstmError::invalid(
                format!("dropout masks of layer {}", cfg.name),
                format!("expected {g} masks of [{b}, {i}] and {g} of [{b}, {h}]"),
            ));
        }
    }
    let (mut hs, mut cs) = match init {
        None => (Array2::zeros((b, h)), Array2::zeros((b, h))),
        Some((h0, c0)) => (h0.to_owned(), c0.to_owned()),
    };
    let lstm = matches!(cfg.cell, Cell::Lstm);
    let gru = matches!(cfg.cell, Cell::Gru { .. });
    let steps_c = if lstm { t } else { 0 };
    let mut pre = match drop.and_then(|d| d.input.as_deref()) {
        None => project_inputs(x, w),
        Some(masks) => project_gates(x, w, masks),
    }
    .into_shape_with_order((b, t, n))
    .expect("[B·T, G·H] reshapes to [B, T, G·H]");
    let mut zh = Array3::<T>::zeros(if gru { (b, t, n) } else { (b, 0, 0) });
    let mut h_prev = Array3::<T>::zeros((b, t, h));
    let mut post = Array3::<T>::zeros((b, t, n));
    let mut c_prev = Array3::<T>::zeros((b, steps_c, h));
    let mut act_c = Array3::<T>::zeros((b, steps_c, h));
    let mut c = Array3::<T>::zeros((b, steps_c, h));
    let mut present = Array2::from_elem((b, t), true);
    let mut last = Array2::<T>::zeros((b, h));
    let mut seq = Array3::<T>::zeros((b, if cfg.return_sequences { t } else { 0 }, h));
    let rows = row_blocks(b, h, n);
    {
        let mut blocks = Vec::new();
        let (mut pre_b, mut zh_b, mut hp_b, mut post_b) = (
            blocks_mut(&mut pre, rows),
            blocks_mut(&mut zh, rows),
            blocks_mut(&mut h_prev, rows),
            blocks_mut(&mut post, rows),
        );
        let (mut cp_b, mut ac_b, mut c_b, mut seq_b) = (
            blocks_mut(&mut c_prev, rows),
            blocks_mut(&mut act_c, rows),
            blocks_mut(&mut c, rows),
            blocks_mut(&mut seq, rows),
        );
        let (mut hs_b, mut cs_b, mut last_b, mut pr_b) = (
            blocks_mut(&mut hs, rows),
            blocks_mut(&mut cs, rows),
            blocks_mut(&mut last, rows),
            blocks_mut(&mut present, rows),
        );
        for r0 in (0..b).step_by(rows) {
            let r1 = (r0 + rows).min(b);
            blocks.push(ForwardRows {
                pre: pre_b.next().expect("one block per rows"),
                zh: zh_b.next().expect("one block per rows"),
                h_prev: hp_b.next().expect("one block per rows"),
                post: post_b.next().expect("one block per rows"),
                c_prev: cp_b.next().expect("one block per rows"),
                act_c: ac_b.next().expect("one block per rows"),
                c: c_b.next().expect("one block per rows"),
                seq: seq_b.next().expect("one block per rows"),
                hs: hs_b.next().expect("one block per rows"),
                cs: cs_b.next().expect("one block per rows"),
                last: last_b.next().expect("one block per rows"),
                present: pr_b.next().expect("one block per rows"),
                mask: mask.map(|m| m.slice_move(s![r0..r1, ..])),
                drop: drop_rows(drop, r0, r1),
            });
        }
        if blocks.len() > 1 {
            use rayon::prelude::*;
            blocks
                .into_par_iter()
                .for_each(|rows| forward_rows((cfg, w), rows));
        } else {
            blocks
                .into_iter()
                .for_each(|rows| forward_rows((cfg, w), rows));
        }
    }
    let output = if cfg.return_sequences {
        seq.into_dyn()
    } else {
        last.into_dyn()
    };
    if !lstm {
        cs.fill(T::zero());
    }
    let tape = LstmTape {
        pre,
        zh,
        h_prev,
        post,
        c_prev,
        act_c,
        c,
        present,
        drop: drop.cloned(),
    };
    Ok((
        LstmCall {
            output,
            h: hs,
            c: cs,
        },
        tape,
    ))
}

/// The step loop of [`forward`] over one block of rows, compiled for AVX2 and FMA where the
/// CPU has them (the cell loops then vectorize 8 lanes wide; the same operations, so the
/// same numbers).
fn forward_rows<T: Element>(layer: (&LstmConfig, &LstmWeights<T>), a: ForwardRows<'_, T>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { forward_rows_avx2(layer, a) };
    }
    forward_rows_any(layer, a)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_rows_avx2<T: Element>(
    layer: (&LstmConfig, &LstmWeights<T>),
    a: ForwardRows<'_, T>,
) {
    forward_rows_any(layer, a)
}

#[inline(always)]
fn forward_rows_any<T: Element>(
    (cfg, w): (&LstmConfig, &LstmWeights<T>),
    mut a: ForwardRows<'_, T>,
) {
    let (b, t, _) = a.h_prev.dim();
    let h = cfg.units;
    let g = cfg.cell.gates();
    let n = g * h;
    let (act, rec) = (cfg.activation, cfg.recurrent_activation);
    let b_rec = recurrent_bias(w, n);
    let u = &w.recurrent_kernel;
    let lstm = matches!(cfg.cell, Cell::Lstm);
    let drop = a.drop.as_ref();
    let mut rh = Array2::<T>::zeros((b, h));
    for s in 0..t {
        let tt = time_of(cfg.go_backwards, t, s);
        match cfg.cell {
            Cell::Gru { reset_after: false } => {
                let mut zh = a.zh.slice_mut(s![.., tt, ..]);
                recurrent_blocks(a.hs.view(), u.view(), zh.view_mut(), drop, 0..2, (h, false));
                // (r · h_prev) U_h with r from this step (h_prev under its mask)
                let zx = a.pre.slice(s![.., tt, ..]);
                for r in 0..b {
                    for j in 0..h {
                        let kept = drop.map_or(T::one(), |d| d.recurrent[2][[r, j]]);
                        rh[[r, j]] =
                            rec.apply(zx[[r, h + j]] + zh[[r, h + j]]) * a.hs[[r, j]] * kept;
                    }
                }
                matmul_serial(
                    rh.view(),
                    u.slice(s![.., 2 * h..]),
                    zh.slice_mut(s![.., 2 * h..]),
                    false,
                );
            }
            Cell::Gru { reset_after: true } => {
                let mut zh = a.zh.slice_mut(s![.., tt, ..]);
                recurrent_blocks(a.hs.view(), u.view(), zh.view_mut(), drop, 0..g, (h, false));
                if let Some(bias) = b_rec {
                    zh += &bias;
                }
            }
            // the recurrent product added to the step's projection
            _ => recurrent_blocks(
                a.hs.view(),
                u.view(),
                a.pre.slice_mut(s![.., tt, ..]),
                drop,
                0..g,
                (h, true),
            ),
        }
        a.h_prev.slice_mut(s![.., tt, ..]).assign(&a.hs);
        if lstm {
            a.c_prev.slice_mut(s![.., tt, ..]).assign(&a.cs);
        }
        for r in 0..b {
            let present = a.mask.as_ref().is_none_or(|m| m[[r, tt]]);
            a.present[[r, s]] = present;
            if !present {
                if cfg.zero_output_for_mask {
                    a.last.row_mut(r).fill(T::zero());
                }
                continue;
            }
            // the row's values as slices (one pass per gate block, the activations over
            // whole blocks)
            let pre_r = a.pre.slice(s![r, tt, ..]);
            let pre_r = pre_r.as_slice().expect("a standard layout");
            let post = a
                .post
                .slice_mut(s![r, tt, ..])
                .into_slice()
                .expect("a standard layout");
            let h_r = a.hs.row_mut(r).into_slice().expect("a standard layout");
            let last_r = a.last.row_mut(r).into_slice().expect("a standard layout");
            match cfg.cell {
                Cell::Lstm => {
                    post.copy_from_slice(pre_r);
                    rec.apply_slice(&mut post[..2 * h]);
                    act.apply_slice(&mut post[2 * h..3 * h]);
                    rec.apply_slice(&mut post[3 * h..]);
                    let c_r = a.cs.row_mut(r).into_slice().expect("a standard layout");
                    let ac = a
                        .act_c
                        .slice_mut(s![r, tt, ..])
                        .into_slice()
                        .expect("a standard layout");
                    for j in 0..h {
                        c_r[j] = post[h + j] * c_r[j] + post[j] * post[2 * h + j];
                        ac[j] = c_r[j];
                    }
                    act.apply_slice(ac);
                    for j in 0..h {
                        h_r[j] = post[3 * h + j] * ac[j];
                    }
                }
                Cell::Gru { reset_after } => {
                    let zh_r = a.zh.slice(s![r, tt, ..]);
                    let zh_r = zh_r.as_slice().expect("a standard layout");
                    for ((p, &x), &y) in post[..2 * h].iter_mut().zip(pre_r).zip(zh_r) {
                        *p = x + y;
                    }
                    rec.apply_slice(&mut post[..2 * h]);
                    for j in 0..h {
                        post[2 * h + j] = if reset_after {
                            pre_r[2 * h + j] + post[h + j] * zh_r[2 * h + j]
                        } else {
                            pre_r[2 * h + j] + zh_r[2 * h + j]
                        };
                    }
                    act.apply_slice(&mut post[2 * h..]);
                    for j in 0..h {
                        let z = post[j];
                        h_r[j] = z * h_r[j] + (T::one() - z) * post[2 * h + j];
                    }
                }
                Cell::SimpleRnn => {
                    post.copy_from_slice(pre_r);
                    act.apply_slice(post);
                    h_r.copy_from_slice(post);
                }
            }
            last_r.copy_from_slice(h_r);
        }
        if lstm {
            a.c.slice_mut(s![.., tt, ..]).assign(&a.cs);
        }
        if cfg.return_sequences {
            a.seq.slice_mut(s![.., s, ..]).assign(&a.last);
        }
    }
}

/// The shapes of a call's inputs (`x [B, T, input]`, `mask [B, T]`, `h0`, `c0` `[B, H]`),
/// for the CPU's and the GPU's forward passes.
pub(crate) fn check_inputs<T>(
    cfg: &LstmConfig,
    input: usize,
    x: ArrayView3<'_, T>,
    mask: Option<ArrayView2<'_, bool>>,
    init: Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>,
) -> Result<()> {
    let (b, t, i) = x.dim();
    let (h, name) = (cfg.units, &cfg.name);
    if i != input {
        return Err(LstmError::shape(
            format!("input of layer {name}"),
            &[b, t, input],
            &[b, t, i],
        ));
    }
    if let Some(m) = mask {
        if m.dim() != (b, t) {
            return Err(LstmError::shape(
                format!("mask of layer {name}"),
                &[b, t],
                m.shape(),
            ));
        }
    }
    if let Some((h0, c0)) = init {
        for (s, what) in [(h0, "h0"), (c0, "c0")] {
            if s.dim() != (b, h) {
                return Err(LstmError::shape(
                    format!("initial state {what} of layer {name}"),
                    &[b, h],
                    s.shape(),
                ));
            }
        }
    }
    Ok(())
}

/// The shapes of the cotangents of a call of `b` rows and `t` steps (the output's, and the
/// final states' `[B, H]`), for the CPU's and the GPU's backward passes.
pub(crate) fn check_cotangents<T>(
    cfg: &LstmConfig,
    b: usize,
    t: usize,
    cot: &LstmCotangents<T>,
) -> Result<()> {
    let (h, name) = (cfg.units, &cfg.name);
    let want: Vec<usize> = if cfg.return_sequences {
        vec![b, t, h]
    } else {
        vec![b, h]
    };
    if cot.output.shape() != want.as_slice() {
        return Err(LstmError::shape(
            format!("output cotangent of layer {name}"),
            &want,
            cot.output.shape(),
        ));
    }
    for (s, what) in [(&cot.h, "h"), (&cot.c, "c")] {
        if let Some(s) = s {
            if s.dim() != (b, h) {
                return Err(LstmError::shape(
                    format!("final {what} cotangent of layer {name}"),
                    &[b, h],
                    s.shape(),
                ));
            }
        }
    }
    Ok(())
}

/// The backward pass of `layer` for the recorded forward pass `tape` of input `x`, given
/// the cotangents of its outputs: per step (last first) the cell's backward and
/// `dh_prev = d(rec) Uᵀ`; the weight gradients and `dx` then as products over all steps at
/// once (`Xᵀ dZx`, `H_prevᵀ dZh`, `dZx Wᵀ`).
pub(crate) fn backward<T: Element>(
    layer: (&LstmConfig, &LstmWeights<T>),
    x: ArrayView3<'_, T>,
    tape: &LstmTape<T>,
    cot: &LstmCotangents<T>,
) -> Result<LstmGrads<T>> {
    Ok(backward_carry(layer, x, tape, cot, None)?.0)
}

/// [`backward`] with the repeated-output cotangent `dy0` coming in from later steps (None:
/// the call's own rule), returning the one left after the first step.
fn backward_carry<T: Element>(
    (cfg, w): (&LstmConfig, &LstmWeights<T>),
    x: ArrayView3<'_, T>,
    tape: &LstmTape<T>,
    cot: &LstmCotangents<T>,
    dy0: Option<Array2<T>>,
) -> Result<(LstmGrads<T>, Array2<T>)> {
    let (b, t, i) = x.dim();
    let h = cfg.units;
    let n = cfg.cell.gates() * h;
    check_cotangents(cfg, b, t, cot)?;
    if tape.pre.dim() != (b, t, n) {
        return Err(LstmError::invalid(
            format!("layer {}", cfg.name),
            "the tape is of another call",
        ));
    }
    let u = &w.recurrent_kernel;
    let v1 = matches!(cfg.cell, Cell::Gru { reset_after: false });
    let gru = matches!(cfg.cell, Cell::Gru { .. });
    let mut dh = cot.h.clone().unwrap_or_else(|| Array2::zeros((b, h)));
    let mut dc = cot.c.clone().unwrap_or_else(|| Array2::zeros((b, h)));
    // the cotangent reaching the output of the current step (Keras's repeated outputs
    // carry it back to the last present step)
    let mut dy = Array2::<T>::zeros((b, h));
    if let Some(d0) = dy0 {
        if d0.dim() != (b, h) {
            return Err(LstmError::shape(
                format!("output cotangent of layer {}", cfg.name),
                &[b, h],
                d0.shape(),
            ));
        }
        dy = d0;
    } else if !cfg.return_sequences {
        dy.assign(
            &cot.output
                .view()
                .into_dimensionality::<ndarray::Ix2>()
                .expect("checked above"),
        );
    }
    // d(pre) by time [B, T, G·H] (for an LSTM and a SimpleRNN also the recurrent side's);
    // a GRU's recurrent side apart
    let mut dzx_all = Array3::<T>::zeros((b, t, n));
    let mut dzh_all = Array3::<T>::zeros(if gru { (b, t, n) } else { (b, 0, 0) });
    // Uᵀ laid out row-major once (the per-step product reads it many times)
    let ut = u.t().as_standard_layout().into_owned();
    let rows = row_blocks(b, h, n);
    let partials: Vec<Array2<T>> = {
        let mut blocks = Vec::new();
        let (mut dh_b, mut dc_b, mut dy_b) = (
            blocks_mut(&mut dh, rows),
            blocks_mut(&mut dc, rows),
            blocks_mut(&mut dy, rows),
        );
        let (mut dzx_b, mut dzh_b) = (
            blocks_mut(&mut dzx_all, rows),
            blocks_mut(&mut dzh_all, rows),
        );
        for r0 in (0..b).step_by(rows) {
            let r1 = (r0 + rows).min(b);
            let r = s![r0..r1, .., ..];
            blocks.push(BackwardRows {
                dh: dh_b.next().expect("one block per rows"),
                dc: dc_b.next().expect("one block per rows"),
                dy: dy_b.next().expect("one block per rows"),
                dzx: dzx_b.next().expect("one block per rows"),
                dzh: dzh_b.next().expect("one block per rows"),
                pre: tape.pre.slice(r),
                zh: tape.zh.slice(r),
                h_prev: tape.h_prev.slice(r),
                post: tape.post.slice(r),
                c_prev: tape.c_prev.slice(r),
                act_c: tape.act_c.slice(r),
                c: tape.c.slice(r),
                present: tape.present.slice(s![r0..r1, ..]),
                cot: cot.output.slice_axis(Axis(0), (r0..r1).into()),
                drop: drop_rows(tape.drop.as_ref(), r0, r1),
            });
        }
        if blocks.len() > 1 {
            use rayon::prelude::*;
            blocks
                .into_par_iter()
                .map(|rows| backward_rows((cfg, w), &ut, rows))
                .collect()
        } else {
            blocks
                .into_iter()
                .map(|rows| backward_rows((cfg, w), &ut, rows))
                .collect()
        }
    };
    // (a GRU without reset_after sums its recurrent kernel's gradient step by step)
    let mut gr = Array2::<T>::zeros((h, n));
    if v1 {
        for p in &partials {
            gr += p;
        }
    }
    let drop = tape.drop.as_ref();
    // the weight gradients and dx over all steps at once
    let x2 = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((b * t, i))
        .expect("[B, T, I] reshapes to [B·T, I]");
    let dzx2 = dzx_all
        .into_shape_with_order((b * t, n))
        .expect("[B, T, G·H] reshapes to [B·T, G·H]");
    let mut gk = Array2::<T>::zeros((i, n));
    let mut gx = Array2::<T>::zeros((b * t, i));
    match drop.and_then(|d| d.input.as_deref()) {
        None => {
            matmul(x2.t(), dzx2.view(), gk.view_mut(), false);
            matmul(dzx2.view(), w.kernel.t(), gx.view_mut(), false);
        }
        // gate block k read x ⊙ D_k: dW_k = (x ⊙ D_k)ᵀ dz_k, dx = Σ_k (dz_k W_kᵀ) ⊙ D_k
        Some(masks) => {
            let hk = n / masks.len();
            let mut dk = Array2::<T>::zeros((b * t, i));
            for (k, m) in masks.iter().enumerate() {
                let block = s![.., k * hk..(k + 1) * hk];
                let xk = masked_steps(x, m)
                    .into_shape_with_order((b * t, i))
                    .expect("[B, T, I] reshapes to [B·T, I]");
                matmul(xk.t(), dzx2.slice(block), gk.slice_mut(block), false);
                matmul(
                    dzx2.slice(block),
                    w.kernel.slice(block).t(),
                    dk.view_mut(),
                    false,
                );
                let dk3 = dk
                    .view()
                    .into_shape_with_order((b, t, i))
                    .expect("[B·T, I] reshapes to [B, T, I]");
                let mut gx3 = gx
                    .view_mut()
                    .into_shape_with_order((b, t, i))
                    .expect("[B·T, I] reshapes to [B, T, I]");
                gx3 += &masked_steps(dk3, m);
            }
        }
    }
    let dzh2 = if gru {
        dzh_all
            .into_shape_with_order((b * t, n))
            .expect("[B, T, G·H] reshapes to [B·T, G·H]")
    } else {
        Array2::zeros((0, n))
    };
    // (the recurrent side's cotangent: a GRU's own, the whole pre-activation's otherwise)
    let dzr2 = if gru { dzh2.view() } else { dzx2.view() };
    if !v1 {
        let hp2 = tape
            .h_prev
            .view()
            .into_shape_with_order((b * t, h))
            .expect("[B, T, H] reshapes to [B·T, H]");
        match drop {
            None => matmul(hp2.t(), dzr2, gr.view_mut(), false),
            // dU_k = Σ_t (h_prev ⊙ R_k)ᵀ dz_k
            Some(d) => {
                for (k, m) in d.recurrent.iter().enumerate() {
                    let block = s![.., k * h..(k + 1) * h];
                    let hk = masked_steps(tape.h_prev.view(), m)
                        .into_shape_with_order((b * t, h))
                        .expect("[B, T, H] reshapes to [B·T, H]");
                    matmul(hk.t(), dzr2.slice(block), gr.slice_mut(block), false);
                }
            }
        }
    }
    let gb = dzx2.sum_axis(Axis(0));
    let bias = w.bias.as_ref().map(|bias| {
        if bias.len() == 2 * n {
            ndarray::concatenate(Axis(0), &[gb.view(), dzr2.sum_axis(Axis(0)).view()])
                .expect("two halves")
        } else {
            gb
        }
    });
    if !matches!(cfg.cell, Cell::Lstm) {
        dc.fill(T::zero());
    }
    Ok((
        LstmGrads {
            kernel: gk,
            recurrent_kernel: gr,
            bias,
            x: gx
                .into_shape_with_order((b, t, i))
                .expect("[B·T, I] reshapes to [B, T, I]"),
            h0: dh,
            c0: dc,
        },
        dy,
    ))
}

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
    drop: Option<&GateMasks<T>>,
    seg: usize,
) -> Result<(LstmCall<T>, Checkpoints<T>)> {
    let (b, t, _) = x.dim();
    let h = cfg.units;
    check_inputs(cfg, w.kernel.nrows(), x, mask, None)?;
    let seg = seg.max(1);
    let seg_cfg = LstmConfig {
        return_sequences: true,
        ..cfg.clone()
    };
    let (mut hs, mut cs) = (Array2::<T>::zeros((b, h)), Array2::<T>::zeros((b, h)));
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

/// One row block's share of a backward pass (its rows of the cotangents, the tape and the
/// cotangent arrays it fills).
struct BackwardRows<'a, T> {
    dh: ArrayViewMut2<'a, T>,
    dc: ArrayViewMut2<'a, T>,
    dy: ArrayViewMut2<'a, T>,
    dzx: ArrayViewMut3<'a, T>,
    dzh: ArrayViewMut3<'a, T>,
    pre: ArrayView3<'a, T>,
    zh: ArrayView3<'a, T>,
    h_prev: ArrayView3<'a, T>,
    post: ArrayView3<'a, T>,
    c_prev: ArrayView3<'a, T>,
    act_c: ArrayView3<'a, T>,
    c: ArrayView3<'a, T>,
    present: ArrayView2<'a, bool>,
    /// The output's cotangent rows (`[rows, T, H]` or `[rows, H]`).
    cot: ndarray::ArrayViewD<'a, T>,
    drop: Option<GateMasks<T>>,
}

/// The step loop of [`backward`] over one block of rows (last step first); returns its part
/// of the recurrent kernel's gradient for a GRU without reset_after (accumulated per step),
/// zeros otherwise.
fn backward_rows<T: Element>(
    layer: (&LstmConfig, &LstmWeights<T>),
    ut: &Array2<T>,
    a: BackwardRows<'_, T>,
) -> Array2<T> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { backward_rows_avx2(layer, ut, a) };
    }
    backward_rows_any(layer, ut, a)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_rows_avx2<T: Element>(
    layer: (&LstmConfig, &LstmWeights<T>),
    ut: &Array2<T>,
    a: BackwardRows<'_, T>,
) -> Array2<T> {
    backward_rows_any(layer, ut, a)
}

#[inline(always)]
fn backward_rows_any<T: Element>(
    (cfg, w): (&LstmConfig, &LstmWeights<T>),
    ut: &Array2<T>,
    mut a: BackwardRows<'_, T>,
) -> Array2<T> {
    let (b, t, _) = a.h_prev.dim();
    let h = cfg.units;
    let n = cfg.cell.gates() * h;
    let (act, rec) = (cfg.activation, cfg.recurrent_activation);
    let u = &w.recurrent_kernel;
    let v1 = matches!(cfg.cell, Cell::Gru { reset_after: false });
    let gru = matches!(cfg.cell, Cell::Gru { .. });
    let (zero, one) = (T::zero(), T::one());
    let drop = a.drop.as_ref();
    let mut gr = Array2::<T>::zeros((h, n));
    let mut dh_prev = Array2::<T>::zeros((b, h));
    // (a row's activation derivatives: the gates', then act'(c))
    let mut dv = vec![zero; n + h];
    for s in (0..t).rev() {
        let tt = time_of(cfg.go_backwards, t, s);
        if cfg.return_sequences {
            a.dy += &a.cot.slice(s![.., s, ..]);
        }
        let pre = a.pre.slice(s![.., tt, ..]);
        let hp = a.h_prev.slice(s![.., tt, ..]);
        let post = a.post.slice(s![.., tt, ..]);
        dh_prev.fill(zero);
        {
            let mut dzx = a.dzx.slice_mut(s![.., tt, ..]);
            let mut dzh = if gru {
                Some(a.dzh.slice_mut(s![.., tt, ..]))
            } else {
                None
            };
            for r in 0..b {
                if !a.present[[r, s]] {
                    // states pass through; the output cotangent goes on to the previous
                    // output unless this step's output was zeros
                    if cfg.zero_output_for_mask {
                        a.dy.row_mut(r).fill(zero);
                    }
                    continue;
                }
                // the row's values as slices
                let pre_r = pre.row(r);
                let pre_r = pre_r.as_slice().expect("a standard layout");
                let g_r = post.row(r);
                let g_r = g_r.as_slice().expect("a standard layout");
                let dh_r = a.dh.row(r);
                let dh_r = dh_r.as_slice().expect("a standard layout");
                let dy_r = a.dy.row(r);
                let dy_r = dy_r.as_slice().expect("a standard layout");
                let dzx_r = dzx.row_mut(r).into_slice().expect("a standard layout");
                let dhp_r = dh_prev.row_mut(r).into_slice().expect("a standard layout");
                match cfg.cell {
                    Cell::Lstm => {
                        let ac_r = a.act_c.slice(s![r, tt, ..]);
                        let ac_r = ac_r.as_slice().expect("a standard layout");
                        let c_r = a.c.slice(s![r, tt, ..]);
                        let c_r = c_r.as_slice().expect("a standard layout");
                        let cp_r = a.c_prev.slice(s![r, tt, ..]);
                        let cp_r = cp_r.as_slice().expect("a standard layout");
                        let dc_r = a.dc.row_mut(r).into_slice().expect("a standard layout");
                        // the activations' derivatives per gate block, then the products
                        derivative_slice(rec, &pre_r[..2 * h], &g_r[..2 * h], &mut dv[..2 * h]);
                        let (c_part, o_part) = (2 * h..3 * h, 3 * h..n);
                        derivative_slice(
                            act,
                            &pre_r[c_part.clone()],
                            &g_r[c_part.clone()],
                            &mut dv[c_part],
                        );
                        derivative_slice(
                            rec,
                            &pre_r[o_part.clone()],
                            &g_r[o_part.clone()],
                            &mut dv[o_part],
                        );
                        derivative_slice(act, c_r, ac_r, &mut dv[n..]);
                        for j in 0..h {
                            let dhj = dh_r[j] + dy_r[j];
                            let g = |k: usize| g_r[k * h + j];
                            let d = |k: usize| dv[k * h + j];
                            let dcj = dc_r[j] + dhj * g(3) * dv[n + j];
                            dc_r[j] = dcj * g(1);
                            dzx_r[j] = dcj * g(2) * d(0);
                            dzx_r[h + j] = dcj * cp_r[j] * d(1);
                            dzx_r[2 * h + j] = dcj * g(0) * d(2);
                            dzx_r[3 * h + j] = dhj * ac_r[j] * d(3);
                        }
                    }
                    Cell::Gru { reset_after } => {
                        let hp_r = hp.row(r);
                        let hp_r = hp_r.as_slice().expect("a standard layout");
                        let zh_r = a.zh.slice(s![r, tt, ..]);
                        let zh_r = zh_r.as_slice().expect("a standard layout");
                        let dzh_r = dzh
                            .as_mut()
                            .expect("a GRU")
                            .row_mut(r)
                            .into_slice()
                            .expect("a standard layout");
                        for j in 0..h {
                            let dhj = dh_r[j] + dy_r[j];
                            let (z, rg, hh) = (g_r[j], g_r[h + j], g_r[2 * h + j]);
                            let ph = if reset_after {
                                pre_r[2 * h + j] + rg * zh_r[2 * h + j]
                            } else {
                                pre_r[2 * h + j] + zh_r[2 * h + j]
                            };
                            let dz =
                                dhj * (hp_r[j] - hh) * derivative_at(rec, pre_r[j] + zh_r[j], z);
                            let dph = dhj * (one - z) * derivative_at(act, ph, hh);
                            dhp_r[j] = dhj * z;
                            dzx_r[j] = dz;
                            dzh_r[j] = dz;
                            dzx_r[2 * h + j] = dph;
                            if reset_after {
                                let dr = dph
                                    * zh_r[2 * h + j]
                                    * derivative_at(rec, pre_r[h + j] + zh_r[h + j], rg);
                                dzx_r[h + j] = dr;
                                dzh_r[h + j] = dr;
                                dzh_r[2 * h + j] = dph * rg;
                            } else {
                                // d(r · h_prev) needs the product with U_hᵀ: below
                                dzh_r[2 * h + j] = dph;
                            }
                        }
                    }
                    Cell::SimpleRnn => {
                        derivative_slice(act, pre_r, g_r, &mut dv[..h]);
                        for j in 0..h {
                            dzx_r[j] = (dh_r[j] + dy_r[j]) * dv[j];
                        }
                    }
                }
                a.dy.row_mut(r).fill(zero);
            }
        }
        if v1 {
            // hh = act(x_h + (r·h̃) U_h) with h̃ = h_prev (times its mask under recurrent
            // dropout): d(r·h̃) = dph U_hᵀ, then r's gate
            let kept = |k: usize, r: usize, j: usize| drop.map_or(one, |d| d.recurrent[k][[r, j]]);
            let zh = a.zh.slice(s![.., tt, ..]);
            let mut dzx = a.dzx.slice_mut(s![.., tt, ..]);
            let mut dzh = a.dzh.slice_mut(s![.., tt, ..]);
            let dph = dzh.slice(s![.., 2 * h..]).to_owned();
            let mut drh = Array2::<T>::zeros((b, h));
            matmul(
                dph.view(),
                u.slice(s![.., 2 * h..]).t(),
                drh.view_mut(),
                false,
            );
            let mut rh = Array2::<T>::zeros((b, h));
            for r in 0..b {
                if !a.present[[r, s]] {
                    continue;
                }
                for j in 0..h {
                    let rg = post[[r, h + j]];
                    let hm = hp[[r, j]] * kept(2, r, j);
                    rh[[r, j]] = rg * hm;
                    let dr =
                        drh[[r, j]] * hm * derivative_at(rec, pre[[r, h + j]] + zh[[r, h + j]], rg);
                    dzx[[r, h + j]] = dr;
                    dzh[[r, h + j]] = dr;
                    dh_prev[[r, j]] += drh[[r, j]] * rg * kept(2, r, j);
                }
            }
            matmul(rh.t(), dph.view(), gr.slice_mut(s![.., 2 * h..]), true);
            match drop {
                None => {
                    let dzr = dzh.slice(s![.., ..2 * h]);
                    matmul(hp.t(), dzr, gr.slice_mut(s![.., ..2 * h]), true);
                    matmul(dzr, u.slice(s![.., ..2 * h]).t(), dh_prev.view_mut(), true);
                }
                Some(d) => {
                    for k in 0..2 {
                        let block = s![.., k * h..(k + 1) * h];
                        let hk = &hp * &d.recurrent[k];
                        matmul(hk.t(), dzh.slice(block), gr.slice_mut(block), true);
                        let mut dk = Array2::<T>::zeros((b, h));
                        matmul(dzh.slice(block), u.slice(block).t(), dk.view_mut(), false);
                        dh_prev += &(&dk * &d.recurrent[k]);
                    }
                }
            }
        } else {
            let dzr = if gru {
                a.dzh.slice(s![.., tt, ..])
            } else {
                a.dzx.slice(s![.., tt, ..])
            };
            match drop {
                None => matmul_serial(dzr, ut.view(), dh_prev.view_mut(), true),
                // dh_prev += Σ_k (dz_k U_kᵀ) ⊙ R_k
                Some(d) => {
                    let mut dk = Array2::<T>::zeros((b, h));
                    for (k, m) in d.recurrent.iter().enumerate() {
                        matmul_serial(
                            dzr.slice(s![.., k * h..(k + 1) * h]),
                            ut.slice(s![k * h..(k + 1) * h, ..]),
                            dk.view_mut(),
                            false,
                        );
                        dh_prev += &(&dk * m);
                    }
                }
            }
        }
        for r in 0..b {
            if a.present[[r, s]] {
                a.dh.row_mut(r).assign(&dh_prev.row(r));
            }
        }
    }
    gr
}

/// One LSTM, GRU or SimpleRNN call on `x [B, T, I]` (with `mask [B, T]` and initial states `(h0, c0)`) and
/// its gradients for the cotangents `cot` of its outputs, as `tf.GradientTape` computes them
/// for Keras's layer.
///
/// ```
/// use lstm_wgpu::cpu::Lstm;
/// use lstm_wgpu::train::{lstm_gradients, LstmCotangents};
/// use lstm_wgpu::{LstmConfig, LstmWeights};
/// use ndarray::{Array1, Array2, Array3};
///
/// let cfg = LstmConfig::new(2).return_sequences(true);
/// let w = LstmWeights::new(&cfg, 3, Array2::from_elem((3, 8), 0.1f64),
///     Array2::from_elem((2, 8), -0.2), Some(Array1::zeros(8))).unwrap();
/// let layer = Lstm::new(cfg, w).unwrap();
/// let x = Array3::from_elem((1, 4, 3), 0.5f64);
/// let cot = LstmCotangents { output: ndarray::ArrayD::from_elem(vec![1, 4, 2], 1.0), h: None, c: None };
/// let (call, g) = lstm_gradients(&layer, x.view(), None, None, &cot).unwrap();
/// assert_eq!(call.output.shape(), &[1, 4, 2]);
/// assert_eq!(g.kernel.dim(), (3, 8));
/// assert_eq!(g.x.dim(), (1, 4, 3));
/// ```
pub fn lstm_gradients<T: Element>(
    layer: &Lstm<T>,
    x: ArrayView3<'_, T>,
    mask: Option<ArrayView2<'_, bool>>,
    init: Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>,
    cot: &LstmCotangents<T>,
) -> Result<(LstmCall<T>, LstmGrads<T>)> {
    let parts = (layer.config(), layer.weights());
    let (call, tape) = forward(parts, x, mask, init, None)?;
    Ok((call, backward(parts, x, &tape, cot)?))
}

#[cfg(test)]
mod tests {
    use super::{backward, backward_recomputed, forward, forward_recomputed, LstmCotangents};
    use crate::config::LstmConfig;
    use crate::train::dropout::GateMasks;
    use crate::weights::LstmWeights;
    use ndarray::{Array1, Array2, Array3, ArrayD};

    fn worst(a: &ndarray::ArrayViewD<'_, f64>, b: &ndarray::ArrayViewD<'_, f64>) -> f64 {
        assert_eq!(a.shape(), b.shape());
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Recompute mode against the whole tape: the same outputs and gradients for every cell,
    /// mask pattern (rows masked at segment starts and ends, a fully masked row),
    /// go_backwards, zero_output_for_mask, returned sequences or not, recurrent dropout, and
    /// segment lengths that divide the sequence, do not, are 1 or longer than it.
    #[test]
    fn recompute_mode_matches_the_whole_tape() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        let (b, t, i, h) = (4, 11, 3, 5);
        let mut worst_seen = 0.0f64;
        for round in 0..12 {
            let class = ["LSTM", "GRU", "SimpleRNN"][round % 3];
            let cfg = LstmConfig::from_keras_class(
                class,
                &serde_json::json!({
                    "units": h, "return_sequences": round % 2 == 0,
                    "go_backwards": round % 4 == 1, "zero_output_for_mask": round % 5 == 2,
                    "reset_after": round % 6 != 4,
                }),
            )
            .unwrap();
            let g = cfg.cell.gates();
            let nb = if class == "GRU" && round % 6 != 4 {
                2 * g * h
            } else {
                g * h
            };
            let w = LstmWeights::new(
                &cfg,
                i,
                Array2::from_shape_fn((i, g * h), |_| next()),
                Array2::from_shape_fn((h, g * h), |_| next()),
                Some(Array1::from_shape_fn(nb, |_| next())),
            )
            .unwrap();
            let x = Array3::from_shape_fn((b, t, i), |_| next());
            let mut mask = Array2::from_elem((b, t), true);
            if round % 3 != 0 {
                for s in [0, 3, 4, 7, 10] {
                    mask[[0, s]] = false;
                }
                mask.row_mut(1).fill(false);
                for s in 5..t {
                    mask[[2, s]] = false;
                }
            }
            let drop = (round % 4 == 3).then(|| GateMasks {
                input: Some(
                    (0..g)
                        .map(|_| Array2::from_shape_fn((b, i), |_| f64::from(next() > -0.4) * 1.4))
                        .collect(),
                ),
                recurrent: (0..g)
                    .map(|_| Array2::from_shape_fn((b, h), |_| f64::from(next() > -0.5) * 1.3))
                    .collect(),
            });
            let out_shape = if cfg.return_sequences {
                vec![b, t, h]
            } else {
                vec![b, h]
            };
            let cot = LstmCotangents {
                output: ArrayD::from_shape_fn(out_shape, |_| next()),
                h: Some(Array2::from_shape_fn((b, h), |_| next())),
                c: Some(Array2::from_shape_fn((b, h), |_| next())),
            };
            let m = Some(mask.view());
            let (call, tape) = forward((&cfg, &w), x.view(), m, None, drop.as_ref()).unwrap();
            let want = backward((&cfg, &w), x.view(), &tape, &cot).unwrap();
            for seg in [1, 2, 3, 4, 11, 16] {
                let (rc, ck) =
                    forward_recomputed((&cfg, &w), x.view(), m, drop.as_ref(), seg).unwrap();
                let got = backward_recomputed((&cfg, &w), x.view(), &ck, &cot).unwrap();
                let e = [
                    worst(&rc.output.view(), &call.output.view()),
                    worst(&rc.h.view().into_dyn(), &call.h.view().into_dyn()),
                    worst(&rc.c.view().into_dyn(), &call.c.view().into_dyn()),
                    worst(
                        &got.kernel.view().into_dyn(),
                        &want.kernel.view().into_dyn(),
                    ),
                    worst(
                        &got.recurrent_kernel.view().into_dyn(),
                        &want.recurrent_kernel.view().into_dyn(),
                    ),
                    worst(
                        &got.bias.as_ref().unwrap().view().into_dyn(),
                        &want.bias.as_ref().unwrap().view().into_dyn(),
                    ),
                    worst(&got.x.view().into_dyn(), &want.x.view().into_dyn()),
                    worst(&got.h0.view().into_dyn(), &want.h0.view().into_dyn()),
                    worst(&got.c0.view().into_dyn(), &want.c0.view().into_dyn()),
                ]
                .into_iter()
                .fold(0.0, f64::max);
                assert!(e < 1e-12, "round {round} ({class}) seg {seg}: {e:e}");
                worst_seen = worst_seen.max(e);
            }
        }
        println!("recompute mode vs the whole tape: worst {worst_seen:.1e}");
    }
}
