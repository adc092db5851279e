//! The GRU and SimpleRNN cells on the generic CPU path: the reference their GPU kernels are
//! tested against (twins of `gru_cell`, `gru_reset_gate`, `gru_candidate` and `rnn_cell` in
//! `shaders/cell.wgsl`, run by `shaders/step.wgsl`), and their time loop, written as
//! `reference::run` is for the LSTM: the input projection of all timesteps first
//! (`project_inputs`), then per step the recurrent product `h · R` as one matrix product and
//! the element-wise update with Keras's mask rule.

use super::reference::{matmul, project_inputs, StepRule};
use crate::config::{Cell, LstmConfig};
use crate::element::Element;
use crate::output::LstmState;
use crate::weights::LstmWeights;
use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, Axis};

/// Twin of `gru_cell` (`reset_after`): `x` and `rec` are the row's three blocks (z, r, h) of
/// the input projection and of `h · R + recurrent bias`; returns the new h of unit `j`.
#[inline]
pub(crate) fn gru_cell<T: Element>(rule: StepRule, x: [T; 3], rec: [T; 3], h_prev: T) -> T {
    let z = rule.recurrent_activation.apply(x[0] + rec[0]);
    let r = rule.recurrent_activation.apply(x[1] + rec[1]);
    let hh = rule.activation.apply(x[2] + r * rec[2]);
    z * h_prev + (T::one() - z) * hh
}

/// Twin of `gru_reset_gate` (without `reset_after`, first half of a step): the reset gate of
/// unit j applied to its h, `r · h`, the input of the candidate's product.
#[inline]
pub(crate) fn gru_reset_gate<T: Element>(rule: StepRule, xr: T, rec_r: T, h_prev: T) -> T {
    rule.recurrent_activation.apply(xr + rec_r) * h_prev
}

/// Twin of `gru_candidate` (without `reset_after`, second half): `rec_z` is `h · R_z`,
/// `rec_h` is `(r · h) · R_h`.
#[inline]
pub(crate) fn gru_candidate<T: Element>(
    rule: StepRule,
    xz: T,
    xh: T,
    rec_z: T,
    rec_h: T,
    h_prev: T,
) -> T {
    let z = rule.recurrent_activation.apply(xz + rec_z);
    let hh = rule.activation.apply(xh + rec_h);
    z * h_prev + (T::one() - z) * hh
}

/// Twin of `rnn_cell`: `activation(x + h · R)`.
#[inline]
pub(crate) fn rnn_cell<T: Element>(rule: StepRule, x: T, rec: T) -> T {
    rule.activation.apply(x + rec)
}

/// The time loop of a GRU or SimpleRNN layer. Returns (sequence `[B, T, H]` in processing
/// order, last output `[B, H]`, final state).
pub(crate) fn run<T: Element>(
    config: &LstmConfig,
    weights: &LstmWeights<T>,
    x: ArrayView3<T>,
    start: LstmState<T>,
    mask: Option<ArrayView2<bool>>,
) -> (Array3<T>, Array2<T>, LstmState<T>) {
    let (b, t, _) = x.dim();
    let hu = config.units;
    let g = config.cell.gates();
    let rule = StepRule::of(config);
    let proj = project_inputs(x, weights)
        .into_shape_with_order((b, t, g * hu))
        .expect("[B·T, G·H] reshapes to [B, T, G·H]");
    // GRU reset_after: the recurrent bias (second half of the [6H] bias).
    let recurrent_bias = match (config.cell, &weights.bias) {
        (Cell::Gru { reset_after: true }, Some(bias)) => Some(bias.slice(s![3 * hu..])),
        _ => None,
    };
    let LstmState { mut h, c } = start;
    let mut out = Array2::<T>::zeros((b, hu));
    let mut sequence = Array3::<T>::zeros((b, t, hu));
    let r = &weights.recurrent_kernel;
    let mut rec = Array2::<T>::zeros((b, g * hu));
    let mut rh = Array2::<T>::zeros((b, hu));
    let mut cand = Array2::<T>::zeros((b, hu));
    let mut h_new = Array2::<T>::zeros((b, hu));
    for step in 0..t {
        let time = if config.go_backwards {
            t - 1 - step
        } else {
            step
        };
        let xs = proj.slice(s![.., time, ..]);
        match config.cell {
            Cell::Gru { reset_after: false } => {
                // r · h first, then the candidate's product with it.
                rec.slice_mut(s![.., ..2 * hu]).fill(T::zero());
                matmul(
                    h.view(),
                    r.slice(s![.., ..2 * hu]),
                    rec.slice_mut(s![.., ..2 * hu]),
                    false,
                );
                for row in 0..b {
                    for j in 0..hu {
                        rh[[row, j]] = gru_reset_gate(
                            rule,
                            xs[[row, hu + j]],
                            rec[[row, hu + j]],
                            h[[row, j]],
                        );
                    }
                }
                matmul(rh.view(), r.slice(s![.., 2 * hu..]), cand.view_mut(), false);
                for row in 0..b {
                    for j in 0..hu {
                        h_new[[row, j]] = gru_candidate(
                            rule,
                            xs[[row, j]],
                            xs[[row, 2 * hu + j]],
                            rec[[row, j]],
                            cand[[row, j]],
                            h[[row, j]],
                        );
                    }
                }
            }
            Cell::Gru { reset_after: true } => {
                matmul(h.view(), r.view(), rec.view_mut(), false);
                if let Some(rb) = recurrent_bias {
                    rec += &rb;
                }
                for row in 0..b {
                    let (x, rc) = (xs.row(row), rec.row(row));
                    for j in 0..hu {
                        let (z, r, c) = (j, hu + j, 2 * hu + j);
                        h_new[[row, j]] =
                            gru_cell(rule, [x[z], x[r], x[c]], [rc[z], rc[r], rc[c]], h[[row, j]]);
                    }
                }
            }
            Cell::SimpleRnn => {
                matmul(h.view(), r.view(), rec.view_mut(), false);
                for row in 0..b {
                    for j in 0..hu {
                        h_new[[row, j]] = rnn_cell(rule, xs[[row, j]], rec[[row, j]]);
                    }
                }
            }
            Cell::Lstm => unreachable!("LSTM layers run reference::run"),
        }
        // Keras's mask rule: a masked row keeps its state; its output repeats the last one,
        // or is zero.
        for row in 0..b {
            let present = mask.is_none_or(|m| m[[row, time]]);
            if present {
                h.row_mut(row).assign(&h_new.row(row));
                out.row_mut(row).assign(&h_new.row(row));
            } else if rule.zero_output_for_mask {
                out.row_mut(row).fill(T::zero());
            }
        }
        sequence.index_axis_mut(Axis(1), step).assign(&out);
    }
    (sequence, out, LstmState { h, c })
}
