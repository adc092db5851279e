//! Backpropagation through a recorded forward pass: the step loop over blocks of batch rows
//! (last step first), then the weight gradients and `dx` as products over all steps.

use super::super::activation::{derivative_at, derivative_slice};
use super::super::dropout::GateMasks;
use super::super::pool;
use super::*;
use crate::config::{Cell, LstmConfig};
use crate::cpu::reference::{matmul, matmul_serial};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::weights::LstmWeights;
use ndarray::{s, Array2, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};

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
pub(super) fn backward_carry<T: Element>(
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
    let mut dzx_all = pool::zeros((b, t, n));
    let mut dzh_all = pool::zeros(if gru { (b, t, n) } else { (b, 0, 0) });
    // Uᵀ laid out row-major once (the per-step product reads it many times)
    let ut = u.t().as_standard_layout().into_owned();
    let ut = StepProduct::new(ut.view(), tape.drop.is_none() && !v1);
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
                c0: tape.c0.slice(s![r0..r1, ..]),
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
        .to_shape((b * t, i))
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
    pool::recycle(dzx2);
    pool::recycle(dzh2);
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
    c0: ArrayView2<'a, T>,
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
    ut: &StepProduct<'_, T>,
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
    ut: &StepProduct<'_, T>,
    a: BackwardRows<'_, T>,
) -> Array2<T> {
    backward_rows_any(layer, ut, a)
}

#[inline(always)]
fn backward_rows_any<T: Element>(
    (cfg, w): (&LstmConfig, &LstmWeights<T>),
    ut: &StepProduct<'_, T>,
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
    let tiny = min_normal::<T>();
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
                        // (c before this step: after the one before, or the initial c)
                        let cp_r = match s {
                            0 => a.c0.row(r),
                            _ => a.c.slice(s![r, time_of(cfg.go_backwards, t, s - 1), ..]),
                        };
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
                        flush_subnormal(dc_r, tiny);
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
                // (the cotangents this step hands on: see `flush_subnormal`)
                flush_subnormal(dzx_r, tiny);
                if let Some(dzh) = dzh.as_mut() {
                    flush_subnormal(
                        dzh.row_mut(r).into_slice().expect("a standard layout"),
                        tiny,
                    );
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
                None => ut.apply(dzr, dh_prev.view_mut(), true),
                // dh_prev += Σ_k (dz_k U_kᵀ) ⊙ R_k
                Some(d) => {
                    let mut dk = Array2::<T>::zeros((b, h));
                    for (k, m) in d.recurrent.iter().enumerate() {
                        matmul_serial(
                            dzr.slice(s![.., k * h..(k + 1) * h]),
                            ut.matrix().slice(s![k * h..(k + 1) * h, ..]),
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
                let mut dh_r = a.dh.row_mut(r);
                dh_r.assign(&dh_prev.row(r));
                flush_subnormal(dh_r.into_slice().expect("a standard layout"), tiny);
            }
        }
    }
    gr
}
