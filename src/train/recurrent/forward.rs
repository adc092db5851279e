//! The recorded forward pass: the projection of all steps, then the step loop over blocks
//! of batch rows side by side.

use super::super::dropout::GateMasks;
use super::super::pool;
use super::*;
use crate::config::{Cell, LstmConfig};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::weights::LstmWeights;
use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3};

/// One row block's share of a forward pass: its rows of every array (`[rows, T, ·]` or
/// `[rows, ·]`; a cell's unused arrays are `[rows, 0, 0]`).
struct ForwardRows<'a, T> {
    pre: ArrayViewMut3<'a, T>,
    zh: ArrayViewMut3<'a, T>,
    h_prev: ArrayViewMut3<'a, T>,
    post: ArrayViewMut3<'a, T>,
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
        None => project_pooled(x, w),
        Some(masks) => project_gates(x, w, masks),
    }
    .into_shape_with_order((b, t, n))
    .expect("[B·T, G·H] reshapes to [B, T, G·H]");
    // (the tape's arrays from the buffers of earlier steps: `pool`)
    let mut zh = pool::zeros(if gru { (b, t, n) } else { (b, 0, 0) });
    let mut h_prev = pool::zeros((b, t, h));
    let mut post = pool::zeros((b, t, n));
    let c0 = if lstm {
        cs.clone()
    } else {
        Array2::zeros((b, 0))
    };
    let mut act_c = pool::zeros((b, steps_c, h));
    let mut c = pool::zeros((b, steps_c, h));
    let mut present = Array2::from_elem((b, t), true);
    let mut last = Array2::<T>::zeros((b, h));
    let mut seq = Array3::<T>::zeros((b, if cfg.return_sequences { t } else { 0 }, h));
    let rows = row_blocks(b, h, n);
    // the recurrent kernel's columns of each per-step product (a GRU without reset_after
    // multiplies r·h by its candidate's columns apart), packed once for the whole call
    let u = &w.recurrent_kernel;
    let pack = drop.is_none();
    let products = if matches!(cfg.cell, Cell::Gru { reset_after: false }) {
        (
            StepProduct::new(u.slice(s![.., ..2 * h]), pack),
            Some(StepProduct::new(u.slice(s![.., 2 * h..]), true)),
        )
    } else {
        (StepProduct::new(u.view(), pack), None)
    };
    {
        let mut blocks = Vec::new();
        let (mut pre_b, mut zh_b, mut hp_b, mut post_b) = (
            blocks_mut(&mut pre, rows),
            blocks_mut(&mut zh, rows),
            blocks_mut(&mut h_prev, rows),
            blocks_mut(&mut post, rows),
        );
        let (mut ac_b, mut c_b, mut seq_b) = (
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
                .for_each(|rows| forward_rows((cfg, w), &products, rows));
        } else {
            blocks
                .into_iter()
                .for_each(|rows| forward_rows((cfg, w), &products, rows));
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
        c0,
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
fn forward_rows<T: Element>(
    layer: (&LstmConfig, &LstmWeights<T>),
    u: &Products<'_, T>,
    a: ForwardRows<'_, T>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { forward_rows_avx2(layer, u, a) };
    }
    forward_rows_any(layer, u, a)
}

/// The per-step products of [`forward_rows`]: by the recurrent kernel's columns of the
/// first product, and a GRU without reset_after's candidate columns.
type Products<'a, T> = (StepProduct<'a, T>, Option<StepProduct<'a, T>>);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_rows_avx2<T: Element>(
    layer: (&LstmConfig, &LstmWeights<T>),
    u: &Products<'_, T>,
    a: ForwardRows<'_, T>,
) {
    forward_rows_any(layer, u, a)
}

#[inline(always)]
fn forward_rows_any<T: Element>(
    (cfg, w): (&LstmConfig, &LstmWeights<T>),
    (u, u_cand): &Products<'_, T>,
    mut a: ForwardRows<'_, T>,
) {
    let (b, t, _) = a.h_prev.dim();
    let h = cfg.units;
    let g = cfg.cell.gates();
    let n = g * h;
    let (act, rec) = (cfg.activation, cfg.recurrent_activation);
    let b_rec = recurrent_bias(w, n);
    let lstm = matches!(cfg.cell, Cell::Lstm);
    let drop = a.drop.as_ref();
    let mut rh = Array2::<T>::zeros((b, h));
    for s in 0..t {
        let tt = time_of(cfg.go_backwards, t, s);
        match cfg.cell {
            Cell::Gru { reset_after: false } => {
                let mut zh = a.zh.slice_mut(s![.., tt, ..]);
                recurrent_blocks(a.hs.view(), u, zh.view_mut(), drop, 0..2, (h, false));
                // (r · h_prev) U_h with r from this step (h_prev under its mask)
                let zx = a.pre.slice(s![.., tt, ..]);
                for r in 0..b {
                    for j in 0..h {
                        let kept = drop.map_or(T::one(), |d| d.recurrent[2][[r, j]]);
                        rh[[r, j]] =
                            rec.apply(zx[[r, h + j]] + zh[[r, h + j]]) * a.hs[[r, j]] * kept;
                    }
                }
                u_cand.as_ref().expect("a GRU's candidate columns").apply(
                    rh.view(),
                    zh.slice_mut(s![.., 2 * h..]),
                    false,
                );
            }
            Cell::Gru { reset_after: true } => {
                let mut zh = a.zh.slice_mut(s![.., tt, ..]);
                recurrent_blocks(a.hs.view(), u, zh.view_mut(), drop, 0..g, (h, false));
                if let Some(bias) = b_rec {
                    zh += &bias;
                }
            }
            // the recurrent product added to the step's projection
            _ => recurrent_blocks(
                a.hs.view(),
                u,
                a.pre.slice_mut(s![.., tt, ..]),
                drop,
                0..g,
                (h, true),
            ),
        }
        a.h_prev.slice_mut(s![.., tt, ..]).assign(&a.hs);
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

/// `x W + b` for all steps (`[B·T, G·H]`, as `cpu::reference::project_inputs`) into a
/// buffer from the pool, reading `x` in place when it is in standard layout.
fn project_pooled<T: Element>(x: ArrayView3<'_, T>, w: &LstmWeights<T>) -> Array2<T> {
    let (b, t, i) = x.dim();
    let n = w.kernel.ncols();
    let x2 = x
        .to_shape((b * t, i))
        .expect("[B, T, I] reshapes to [B·T, I]");
    let mut proj = pool::zeros((b * t, n));
    // (a GRU with reset_after has its recurrent bias after the n input-bias entries)
    if let Some(bias) = &w.bias {
        proj.assign(&bias.slice(s![..n]));
    }
    matmul(
        x2.view(),
        w.kernel.view(),
        proj.view_mut(),
        w.bias.is_some(),
    );
    proj
}
