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
//! projection), gates, `h` before, `c` and `act(c)` after (`c` before a step is `c` after
//! the one before, or the initial `c`: `(2G + 3)·H = 11H` values); a GRU's input and recurrent sides apart, gates and `h` before (`10H`); a
//! SimpleRNN's pre-activation, output and `h` before (`3H`). The step loops run blocks of
//! rows side by side on the cores.

use super::dropout::GateMasks;
use super::pool;
use crate::config::LstmConfig;
use crate::cpu::product::PackedMatrix;
use crate::cpu::reference::{matmul, matmul_serial};
use crate::cpu::Lstm;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::weights::LstmWeights;
use ndarray::{s, Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis};

mod backward;
mod forward;
mod recompute;
#[cfg(test)]
mod tests;

pub(crate) use backward::backward;
use backward::backward_carry;
pub(crate) use forward::forward;
pub(crate) use recompute::{backward_recomputed, forward_recomputed, Checkpoints};

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
pub(crate) struct LstmTape<T: Element> {
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
    /// `c` before the first step (LSTM; `[B, 0]` otherwise), `[B, H]`: before any later
    /// step it is `c` after the one before.
    c0: Array2<T>,
    /// `act(c)` after each step (LSTM; empty otherwise), `[B, T, H]`.
    act_c: Array3<T>,
    /// `c` after each step (LSTM), for `act'(c)` where it needs the argument.
    c: Array3<T>,
    /// The mask in processing order, `[B, T]` (all true without a mask).
    present: Array2<bool>,
    /// The per-gate dropout masks of a call in training mode with `recurrent_dropout`.
    drop: Option<GateMasks<T>>,
}

impl<T: Element> Drop for LstmTape<T> {
    /// The tape's big arrays go back to the pool for the next step's tape.
    fn drop(&mut self) {
        for a in [
            &mut self.pre,
            &mut self.zh,
            &mut self.h_prev,
            &mut self.post,
            &mut self.act_c,
            &mut self.c,
        ] {
            pool::recycle(pool::take(a));
        }
    }
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

/// The smallest normal value of `T` (`f32::MIN_POSITIVE` or `f64::MIN_POSITIVE`).
pub(crate) fn min_normal<T: Element>() -> T {
    if T::is_f32() {
        T::from_f64(f64::from(f32::MIN_POSITIVE))
    } else {
        T::from_f64(f64::MIN_POSITIVE)
    }
}

/// Zeroes the subnormal values of `xs` (magnitudes below `tiny`, the smallest normal; NaN
/// and infinities stay). The backward step loop carries cotangents that shrink by the
/// forget gate or `z` every step, so over hundreds of steps they reach the subnormal range,
/// where each multiply-add costs the CPU tens to a hundred times a normal one (measured:
/// a 1000-step LSTM's training step 2.7x slower). TensorFlow runs its kernels with
/// flush-to-zero set, so Keras's gradients flush them too; here the carried values are
/// flushed in software instead of changing the floating-point environment. The change is
/// below `tiny` per value.
#[inline(always)]
pub(crate) fn flush_subnormal<T: Element>(xs: &mut [T], tiny: T) {
    for x in xs {
        if x.abs() < tiny {
            *x = T::zero();
        }
    }
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

/// Most rows a step's product runs packed ([`StepProduct`]). The packed product runs all
/// its row tiles over one panel slice at a time, so a panel is read from memory once per
/// step whatever the rows. Measured on 2 cores (`train_bench`, alternating runs): batch 1
/// with 1000 steps, H = 128, 14-16 ms a step with gemm, 8-10 ms packed; blocks of 32 rows
/// at 64x50x256x512 117-137 ms with gemm, 110-114 ms packed; 64x50x16x64 the same either
/// way. Larger blocks keep gemm.
const PACKED_MAX_ROWS: usize = 64;

/// One matrix the step loops multiply by many times, `y (+)= x · M`: packed once per call
/// ([`PackedMatrix`]: f32 on AVX-512 or AVX2/FMA), else (or for views the packed product
/// declines) the general product on the calling thread.
pub(super) struct StepProduct<'a, T> {
    m: ArrayView2<'a, T>,
    packed: Option<PackedMatrix>,
}

impl<'a, T: Element> StepProduct<'a, T> {
    /// `m`, packed when `pack` and the packed product runs `T` on this CPU.
    pub(super) fn new(m: ArrayView2<'a, T>, pack: bool) -> Self {
        let packed = pack.then(|| {
            // (the packed values in a buffer of the training pool, as the tapes)
            let len = PackedMatrix::packed_len(m.nrows(), m.ncols());
            let buffer = pool::zeros::<f32, _>(len).into_raw_vec_and_offset().0;
            PackedMatrix::new_in(m, buffer)
        });
        StepProduct {
            m,
            packed: packed.flatten(),
        }
    }

    /// The matrix.
    pub(super) fn matrix(&self) -> ArrayView2<'a, T> {
        self.m
    }

    /// `y = x · M`, or `y += x · M` with `accumulate`.
    pub(super) fn apply(
        &self,
        x: ArrayView2<'_, T>,
        mut y: ndarray::ArrayViewMut2<'_, T>,
        accumulate: bool,
    ) {
        let done = x.nrows() <= PACKED_MAX_ROWS
            && self
                .packed
                .as_ref()
                .is_some_and(|p| p.product(x, y.view_mut(), accumulate));
        if !done {
            matmul_serial(x, self.m, y, accumulate);
        }
    }
}

impl<T> Drop for StepProduct<'_, T> {
    fn drop(&mut self) {
        if let Some(p) = self.packed.take() {
            pool::recycle(Array1::from_vec(p.into_buffer()));
        }
    }
}

/// `zh[:, blocks] = (h ⊙ R_k) U_k` (`+=` with `accumulate`) for the gate blocks `blocks`
/// (`R_k` the recurrent dropout mask of block `k`; `h` itself without masks). `u` is the
/// recurrent kernel's columns of `blocks`.
fn recurrent_blocks<T: Element>(
    hs: ArrayView2<'_, T>,
    u: &StepProduct<'_, T>,
    mut zh: ndarray::ArrayViewMut2<'_, T>,
    drop: Option<&GateMasks<T>>,
    blocks: std::ops::Range<usize>,
    (h, accumulate): (usize, bool),
) {
    let first = blocks.start;
    let zh = zh.slice_mut(s![.., first * h..blocks.end * h]);
    match drop {
        None => u.apply(hs, zh, accumulate),
        Some(d) => {
            let mut zh = zh;
            for k in blocks {
                let hk = &hs * &d.recurrent[k];
                let cols = s![.., (k - first) * h..(k - first + 1) * h];
                matmul_serial(
                    hk.view(),
                    u.matrix().slice(cols),
                    zh.slice_mut(cols),
                    accumulate,
                );
            }
        }
    }
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
