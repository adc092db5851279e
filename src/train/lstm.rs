//! Backpropagation through time for one `LSTM` layer on the CPU, with Keras's semantics: the
//! forward pass of `cpu::reference` (gate order i, f, c, o; a masked step keeps the states
//! and repeats the last output, or gives zeros with `zero_output_for_mask`; `go_backwards`
//! processes the last step first and returns the outputs in that order), recorded step by
//! step, then the steps in reverse:
//!
//! ```text
//! present step:  dh = dh_next + dy_t          (the output is h)
//!                do = dh · act(c);  dc = dc_next + dh · o · act'(c)
//!                di = dc · g;  dg = dc · i;  df = dc · c_prev;  dc_prev = dc · f
//!                dz = [di·rec'(z_i), df·rec'(z_f), dg·act'(z_g), do·rec'(z_o)]
//!                dW += x_tᵀ dz;  dU += h_prevᵀ dz;  db += Σ dz;  dx_t = dz Wᵀ;  dh_prev = dz Uᵀ
//! masked step:   dh, dc pass to the previous step; dy_t passes to the previous output
//!                (Keras repeats it) unless zero_output_for_mask
//! ```
//!
//! per batch row (rows are masked apart). The gradients of the initial states are the `dh`,
//! `dc` left after the first step. Activation memory: the pre-activations `z` (4H), `c_prev`,
//! `c` and `h_prev` of every step, `B·T·7H` values.

use super::activation::derivative;
use crate::config::LstmConfig;
use crate::cpu::Lstm;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::weights::LstmWeights;
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayView3, Axis};

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

/// What the forward pass keeps for the backward pass (one entry per processing step).
#[derive(Debug, Clone)]
pub(crate) struct LstmTape<T> {
    /// Pre-activations `[T, B, 4H]` (processing order).
    z: Array3<T>,
    /// `h` before each step, `[T, B, H]`.
    h_prev: Array3<T>,
    /// `c` before and after each step, `[T, B, H]`.
    c_prev: Array3<T>,
    c: Array3<T>,
    /// The mask in processing order, `[T, B]` (all true without a mask).
    present: Array2<bool>,
}

/// The outputs of an LSTM call: the output (`[B, T, H]` or `[B, H]`) and the final states.
#[derive(Debug, Clone, PartialEq)]
pub struct LstmCall<T> {
    /// The output.
    pub output: ndarray::ArrayD<T>,
    /// The final h, `[B, H]`.
    pub h: Array2<T>,
    /// The final c, `[B, H]`.
    pub c: Array2<T>,
}

/// The time index of processing step `s`.
fn time_of(go_backwards: bool, t: usize, s: usize) -> usize {
    if go_backwards {
        t - 1 - s
    } else {
        s
    }
}

/// The forward pass of `layer` on `x [B, T, I]` under `mask [B, T]` from `init` (h0, c0;
/// zeros when None), recording what the backward pass needs.
pub(crate) fn forward<T: Element>(
    (cfg, w): (&LstmConfig, &LstmWeights<T>),
    x: ArrayView3<'_, T>,
    mask: Option<ArrayView2<'_, bool>>,
    init: Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>,
) -> Result<(LstmCall<T>, LstmTape<T>)> {
    if !matches!(cfg.cell, crate::config::Cell::Lstm) {
        return Err(LstmError::unsupported(
            "cell",
            format!(
                "{:?} in training (layer {}; LSTM is supported)",
                cfg.cell, cfg.name
            ),
        ));
    }
    let (b, t, i) = x.dim();
    let h = cfg.units;
    if i != w.kernel.nrows() {
        return Err(LstmError::shape(
            format!("input of layer {}", cfg.name),
            &[b, t, w.kernel.nrows()],
            &[b, t, i],
        ));
    }
    if let Some(m) = mask {
        if m.dim() != (b, t) {
            return Err(LstmError::shape(
                format!("mask of layer {}", cfg.name),
                &[b, t],
                m.shape(),
            ));
        }
    }
    let (mut hs, mut cs) = match init {
        None => (Array2::zeros((b, h)), Array2::zeros((b, h))),
        Some((h0, c0)) => {
            for (s, what) in [(h0, "h0"), (c0, "c0")] {
                if s.dim() != (b, h) {
                    return Err(LstmError::shape(
                        format!("initial state {what} of layer {}", cfg.name),
                        &[b, h],
                        s.shape(),
                    ));
                }
            }
            (h0.to_owned(), c0.to_owned())
        }
    };
    let (act, rec) = (cfg.activation, cfg.recurrent_activation);
    let mut tape = LstmTape {
        z: Array3::zeros((t, b, 4 * h)),
        h_prev: Array3::zeros((t, b, h)),
        c_prev: Array3::zeros((t, b, h)),
        c: Array3::zeros((t, b, h)),
        present: Array2::from_elem((t, b), true),
    };
    let mut last = Array2::<T>::zeros((b, h));
    let mut seq = cfg.return_sequences.then(|| Array3::<T>::zeros((b, t, h)));
    for s in 0..t {
        let tt = time_of(cfg.go_backwards, t, s);
        let mut z = x.slice(s![.., tt, ..]).dot(&w.kernel) + hs.dot(&w.recurrent_kernel);
        if let Some(bias) = &w.bias {
            z += bias;
        }
        tape.h_prev.index_axis_mut(Axis(0), s).assign(&hs);
        tape.c_prev.index_axis_mut(Axis(0), s).assign(&cs);
        for r in 0..b {
            let present = mask.is_none_or(|m| m[[r, tt]]);
            tape.present[[s, r]] = present;
            if present {
                for j in 0..h {
                    let gi = rec.apply(z[[r, j]]);
                    let gf = rec.apply(z[[r, h + j]]);
                    let gg = act.apply(z[[r, 2 * h + j]]);
                    let go = rec.apply(z[[r, 3 * h + j]]);
                    let c = gf * cs[[r, j]] + gi * gg;
                    cs[[r, j]] = c;
                    hs[[r, j]] = go * act.apply(c);
                    last[[r, j]] = hs[[r, j]];
                }
            } else if cfg.zero_output_for_mask {
                last.row_mut(r).fill(T::zero());
            }
        }
        tape.z.index_axis_mut(Axis(0), s).assign(&z);
        tape.c.index_axis_mut(Axis(0), s).assign(&cs);
        if let Some(seq) = seq.as_mut() {
            seq.slice_mut(s![.., s, ..]).assign(&last);
        }
    }
    let output = match seq {
        Some(seq) => seq.into_dyn(),
        None => last.into_dyn(),
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

/// The backward pass of `layer` for the recorded forward pass `tape` of input `x`, given
/// the cotangents of its outputs.
pub(crate) fn backward<T: Element>(
    (cfg, w): (&LstmConfig, &LstmWeights<T>),
    x: ArrayView3<'_, T>,
    tape: &LstmTape<T>,
    cot: &LstmCotangents<T>,
) -> Result<LstmGrads<T>> {
    let (b, t, i) = x.dim();
    let h = cfg.units;
    let want: Vec<usize> = if cfg.return_sequences {
        vec![b, t, h]
    } else {
        vec![b, h]
    };
    if cot.output.shape() != want.as_slice() {
        return Err(LstmError::shape(
            format!("output cotangent of layer {}", cfg.name),
            &want,
            cot.output.shape(),
        ));
    }
    for (s, what) in [(&cot.h, "h"), (&cot.c, "c")] {
        if let Some(s) = s {
            if s.dim() != (b, h) {
                return Err(LstmError::shape(
                    format!("final {what} cotangent of layer {}", cfg.name),
                    &[b, h],
                    s.shape(),
                ));
            }
        }
    }
    let (act, rec) = (cfg.activation, cfg.recurrent_activation);
    let mut dh = cot.h.clone().unwrap_or_else(|| Array2::zeros((b, h)));
    let mut dc = cot.c.clone().unwrap_or_else(|| Array2::zeros((b, h)));
    // the cotangent reaching the output of the current step (Keras's repeated outputs
    // carry it back to the last present step)
    let mut dy = Array2::<T>::zeros((b, h));
    if !cfg.return_sequences {
        dy.assign(
            &cot.output
                .view()
                .into_dimensionality::<ndarray::Ix2>()
                .expect("checked above"),
        );
    }
    let mut gk = Array2::<T>::zeros((i, 4 * h));
    let mut gr = Array2::<T>::zeros((h, 4 * h));
    let mut gb = Array1::<T>::zeros(4 * h);
    let mut gx = Array3::<T>::zeros((b, t, i));
    let mut dz = Array2::<T>::zeros((b, 4 * h));
    for s in (0..t).rev() {
        let tt = time_of(cfg.go_backwards, t, s);
        if cfg.return_sequences {
            dy += &cot.output.slice(s![.., s, ..]);
        }
        let z = tape.z.index_axis(Axis(0), s);
        let c_prev = tape.c_prev.index_axis(Axis(0), s);
        let c_now = tape.c.index_axis(Axis(0), s);
        dz.fill(T::zero());
        for r in 0..b {
            if !tape.present[[s, r]] {
                // states pass through; the output cotangent goes on to the previous output
                // unless this step's output was zeros
                if cfg.zero_output_for_mask {
                    dy.row_mut(r).fill(T::zero());
                }
                continue;
            }
            for j in 0..h {
                let dhj = dh[[r, j]] + dy[[r, j]];
                let (zi, zf, zg, zo) = (
                    z[[r, j]],
                    z[[r, h + j]],
                    z[[r, 2 * h + j]],
                    z[[r, 3 * h + j]],
                );
                let (gi, gf, gg, go) = (rec.apply(zi), rec.apply(zf), act.apply(zg), rec.apply(zo));
                let c = c_now[[r, j]];
                let ac = act.apply(c);
                let d_o = dhj * ac;
                let dcj = dc[[r, j]] + dhj * go * derivative(act, c);
                let di = dcj * gg;
                let dg = dcj * gi;
                let df = dcj * c_prev[[r, j]];
                dc[[r, j]] = dcj * gf;
                dz[[r, j]] = di * derivative(rec, zi);
                dz[[r, h + j]] = df * derivative(rec, zf);
                dz[[r, 2 * h + j]] = dg * derivative(act, zg);
                dz[[r, 3 * h + j]] = d_o * derivative(rec, zo);
            }
            dy.row_mut(r).fill(T::zero());
        }
        // weights: x_tᵀ dz, h_prevᵀ dz; inputs and the previous h through the kernels
        let xt = x.slice(s![.., tt, ..]);
        gk += &xt.t().dot(&dz);
        gr += &tape.h_prev.index_axis(Axis(0), s).t().dot(&dz);
        gb += &dz.sum_axis(Axis(0));
        gx.slice_mut(s![.., tt, ..]).assign(&dz.dot(&w.kernel.t()));
        let dh_prev = dz.dot(&w.recurrent_kernel.t());
        for r in 0..b {
            if tape.present[[s, r]] {
                dh.row_mut(r).assign(&dh_prev.row(r));
            }
        }
    }
    Ok(LstmGrads {
        kernel: gk,
        recurrent_kernel: gr,
        bias: w.bias.as_ref().map(|_| gb),
        x: gx,
        h0: dh,
        c0: dc,
    })
}

/// One LSTM call on `x [B, T, I]` (with `mask [B, T]` and initial states `(h0, c0)`) and
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
    let (call, tape) = forward(parts, x, mask, init)?;
    Ok((call, backward(parts, x, &tape, cot)?))
}
