//! The CPU path: one Keras LSTM layer on ndarray, for `f32` and `f64`.
//!
//! The work is split exactly as on the GPU so the two can be read side by side:
//! [`project_inputs`] is the twin of `shaders/projection.wgsl` (all timesteps' `x · kernel + bias`
//! as one matrix product) and `cell_update` is the twin of the element-wise part of
//! `shaders/step.wgsl` (gates, cell update, mask rule). The recurrent product `h · R` of each
//! step is one matrix product here and the workgroup-tiled dot product of `step.wgsl` there.
//!
//! That is the generic path: f64, and f32 on CPUs without AVX2/FMA, run it, and it is the
//! reference the fast path is tested against. f32 layers on x86-64 with AVX-512 or AVX2/FMA
//! run the packed kernels of `src/packed.rs` instead (weights packed once when the layer is
//! built, the cell update fused into each step's product); `LSTM_WGPU_CPU_ISA=generic` forces
//! the generic path (`avx2` caps the packed kernels at AVX2).

use crate::config::LstmConfig;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::packed::PackedWeights;
use crate::weights::LstmWeights;
use ndarray::{s, Array2, Array3, ArrayD, ArrayView2, ArrayView3, ArrayViewMut2, Axis};
use std::sync::Arc;

/// The hidden and cell state of a layer, each `[B, H]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LstmState<T> {
    /// Hidden state h (the last step's output when nothing was masked).
    pub h: Array2<T>,
    /// Cell state c.
    pub c: Array2<T>,
}

/// What one call returns, exactly as Keras returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct LstmOutput<T> {
    /// `[B, T, H]` when `return_sequences`, else `[B, H]` (the last processed step's output).
    pub output: ArrayD<T>,
    /// The final state when `return_state`.
    pub state: Option<LstmState<T>>,
}

impl<T: Clone> LstmOutput<T> {
    /// The returned tensors in Keras's order: `[output]` or `[output, h, c]`.
    pub fn into_keras(self) -> Vec<ArrayD<T>> {
        let mut v = vec![self.output];
        if let Some(s) = self.state {
            v.push(s.h.into_dyn());
            v.push(s.c.into_dyn());
        }
        v
    }
}

/// One Keras `LSTM` layer on the CPU.
///
/// ```
/// use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
/// use ndarray::Array3;
///
/// let config = LstmConfig::new(4).return_sequences(true).return_state(true);
/// let weights = LstmWeights::<f32>::random(&config, 3, 0).unwrap();
/// let mut layer = Lstm::new(config, weights).unwrap();
/// let x = Array3::<f32>::ones((2, 5, 3));
/// let out = layer.forward(x.view(), None, None).unwrap();
/// assert_eq!(out.output.shape(), &[2, 5, 4]);
/// let state = out.state.unwrap();
/// // the final h is the last step's output
/// assert_eq!(state.h.row(1), out.output.slice(ndarray::s![1, 4, ..]));
/// ```
#[derive(Debug, Clone)]
pub struct Lstm<T> {
    config: LstmConfig,
    weights: LstmWeights<T>,
    /// The carried state of a stateful layer (None until the first call or after a fresh build).
    state: Option<LstmState<T>>,
    /// The weights packed for the fast f32 kernels (None: the generic path runs).
    packed: Option<Arc<PackedWeights>>,
    /// Scratch memory of the packed kernels, kept between calls.
    scratch: Vec<f32>,
}

impl<T: Element> Lstm<T> {
    /// Builds a layer, checking the weights against the configuration.
    pub fn new(config: LstmConfig, weights: LstmWeights<T>) -> Result<Self> {
        weights.validate(&config, weights.input_dim())?;
        let packed = PackedWeights::new(&weights).map(Arc::new);
        Ok(Lstm {
            config,
            weights,
            state: None,
            packed,
            scratch: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LstmConfig {
        &self.config
    }

    /// The weights.
    pub fn weights(&self) -> &LstmWeights<T> {
        &self.weights
    }

    /// The input width I.
    pub fn input_dim(&self) -> usize {
        self.weights.input_dim()
    }

    /// The state a stateful layer carries into its next call (None before the first call).
    pub fn state(&self) -> Option<&LstmState<T>> {
        self.state.as_ref()
    }

    /// Zeroes the carried state of a stateful layer (Keras `reset_states`). The batch size it
    /// was built for stays.
    ///
    /// ```
    /// use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
    /// let config = LstmConfig::new(2).stateful(true);
    /// let w = LstmWeights::<f32>::random(&config, 1, 0).unwrap();
    /// let mut layer = Lstm::new(config, w).unwrap();
    /// let x = ndarray::Array3::<f32>::ones((1, 3, 1));
    /// let first = layer.forward(x.view(), None, None).unwrap();
    /// let second = layer.forward(x.view(), None, None).unwrap();
    /// assert_ne!(first, second); // the state was carried
    /// layer.reset_states();
    /// assert_eq!(layer.forward(x.view(), None, None).unwrap(), first);
    /// ```
    pub fn reset_states(&mut self) {
        if let Some(s) = &mut self.state {
            s.h.fill(T::zero());
            s.c.fill(T::zero());
        }
    }

    /// Runs the layer on `x [B, T, I]` with an optional initial state (h0, c0), each `[B, H]`,
    /// and an optional mask `[B, T]` (true = step present).
    ///
    /// A stateful layer starts from its carried state unless `initial_state` is given, and
    /// keeps the final state for the next call.
    pub fn forward(
        &mut self,
        x: ArrayView3<T>,
        initial_state: Option<(ArrayView2<T>, ArrayView2<T>)>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<LstmOutput<T>> {
        let (batch, _, _) = check_inputs(self.input_dim(), x, mask)?;
        if let Some((h0, c0)) = initial_state {
            check_state("h0", h0, batch, self.config.units)?;
            check_state("c0", c0, batch, self.config.units)?;
        }
        let start = match (initial_state, &self.state) {
            (Some((h, c)), _) => LstmState {
                h: h.to_owned(),
                c: c.to_owned(),
            },
            (None, Some(s)) if self.config.stateful => s.clone(),
            _ => LstmState {
                h: Array2::zeros((batch, self.config.units)),
                c: Array2::zeros((batch, self.config.units)),
            },
        };
        if self.config.stateful {
            if let Some(s) = &self.state {
                if s.h.nrows() != batch {
                    return Err(LstmError::StatefulBatchChanged {
                        expected: s.h.nrows(),
                        actual: batch,
                    });
                }
            }
        }
        let fast = self.packed.as_ref().and_then(|w| {
            let rule = StepRule::of(&self.config);
            crate::packed::run(
                w,
                rule,
                self.config.go_backwards,
                x,
                &start,
                mask,
                &mut self.scratch,
            )
        });
        let (sequence, last, final_state) = match fast {
            Some(result) => result,
            None => run(&self.config, &self.weights, x, start, mask),
        };
        if self.config.stateful {
            self.state = Some(final_state.clone());
        }
        Ok(LstmOutput {
            output: if self.config.return_sequences {
                sequence.into_dyn()
            } else {
                last.into_dyn()
            },
            state: self.config.return_state.then_some(final_state),
        })
    }
}

/// Validates `x [B, T, I]` (non-empty, I = `input_dim`) and the mask `[B, T]`; returns (B, T, I).
pub(crate) fn check_inputs<T>(
    input_dim: usize,
    x: ArrayView3<T>,
    mask: Option<ArrayView2<bool>>,
) -> Result<(usize, usize, usize)> {
    let (b, t, i) = x.dim();
    if b == 0 {
        return Err(LstmError::invalid("x", "batch size is 0"));
    }
    if t == 0 {
        return Err(LstmError::invalid("x", "number of timesteps is 0"));
    }
    if i != input_dim {
        return Err(LstmError::shape("x", &[b, t, input_dim], x.shape()));
    }
    if let Some(m) = mask {
        if m.dim() != (b, t) {
            return Err(LstmError::shape("mask", &[b, t], m.shape()));
        }
    }
    Ok((b, t, i))
}

/// Checks that the initial state `name` is `[batch, units]`.
pub(crate) fn check_state<T>(
    name: &str,
    state: ArrayView2<T>,
    batch: usize,
    units: usize,
) -> Result<()> {
    if state.dim() != (batch, units) {
        return Err(LstmError::shape(
            format!("initial_state {name}"),
            &[batch, units],
            state.shape(),
        ));
    }
    Ok(())
}

/// Products below this many multiply-adds run on the calling thread: handing them to other
/// threads costs more than it saves (per-step products of small batches).
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// Steps with fewer state elements (B·H) than this update them on the calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 12;

/// `c = a · b`, or `c += a · b` when `accumulate`, with the `gemm` crate's kernels (AVX-512 or
/// AVX2/FMA where the CPU has them, chosen at run time), on all cores for large products.
pub(crate) fn matmul<T: Element>(
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    mut c: ArrayViewMut2<T>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    assert!(
        b.nrows() == k && c.dim() == (m, n),
        "matmul shapes: [{m}, {k}] x {:?} -> {:?}",
        b.dim(),
        c.dim()
    );
    let parallelism = if m * n * k >= PARALLEL_MIN_MACS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let (cs, rs) = (c.strides()[1], c.strides()[0]);
    // SAFETY: the three views are valid for their shapes and strides, `c` is a unique mutable
    // view that cannot alias `a` or `b`, and the dimensions were checked above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            cs,
            rs,
            accumulate,
            a.as_ptr(),
            a.strides()[1],
            a.strides()[0],
            b.as_ptr(),
            b.strides()[1],
            b.strides()[0],
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Twin of `shaders/projection.wgsl`: `x [B·T, I] · kernel [I, 4H] + bias` for all timesteps
/// at once. Row `b·T + t` holds timestep t of batch row b.
pub fn project_inputs<T: Element>(x: ArrayView3<T>, weights: &LstmWeights<T>) -> Array2<T> {
    let (b, t, i) = x.dim();
    let x2 = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((b * t, i))
        .expect("a standard-layout [B, T, I] array reshapes to [B·T, I]");
    let mut proj = match &weights.bias {
        Some(bias) => bias
            .broadcast((b * t, bias.len()))
            .expect("bias is [4H]")
            .to_owned(),
        None => Array2::zeros((b * t, weights.kernel.ncols())),
    };
    matmul(
        x2.view(),
        weights.kernel.view(),
        proj.view_mut(),
        weights.bias.is_some(),
    );
    proj
}

/// The per-layer constants of the element-wise step rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepRule {
    pub activation: crate::Activation,
    pub recurrent_activation: crate::Activation,
    pub zero_output_for_mask: bool,
}

impl StepRule {
    pub(crate) fn of(config: &LstmConfig) -> Self {
        StepRule {
            activation: config.activation,
            recurrent_activation: config.recurrent_activation,
            zero_output_for_mask: config.zero_output_for_mask,
        }
    }
}

/// Twin of `update()` in `shaders/step.wgsl` (gates, cell update, mask rule), for one batch
/// row at once so that the loops vectorize. `z` holds the row's four gate blocks (i, f, c, o)
/// of pre-activations, already the sum of the input projection and the recurrent product; it
/// is overwritten. `h`, `c` and `out` are the row's state and last output, updated in place.
pub(crate) fn cell_update<T: Element>(
    rule: StepRule,
    z: &mut [T],
    h: &mut [T],
    c: &mut [T],
    out: &mut [T],
    present: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { cell_update_avx512(rule, z, h, c, out, present) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { cell_update_avx2(rule, z, h, c, out, present) };
        }
    }
    cell_update_impl(rule, z, h, c, out, present)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn cell_update_avx512<T: Element>(
    rule: StepRule,
    z: &mut [T],
    h: &mut [T],
    c: &mut [T],
    out: &mut [T],
    present: bool,
) {
    cell_update_impl(rule, z, h, c, out, present)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn cell_update_avx2<T: Element>(
    rule: StepRule,
    z: &mut [T],
    h: &mut [T],
    c: &mut [T],
    out: &mut [T],
    present: bool,
) {
    cell_update_impl(rule, z, h, c, out, present)
}

#[inline(always)]
pub(crate) fn cell_update_impl<T: Element>(
    rule: StepRule,
    z: &mut [T],
    h: &mut [T],
    c: &mut [T],
    out: &mut [T],
    present: bool,
) {
    if !present {
        // State carried; the output repeats the previous one, or is zero.
        if rule.zero_output_for_mask {
            out.fill(T::zero());
        }
        return;
    }
    let hu = h.len();
    let (zi, rest) = z.split_at_mut(hu);
    let (zf, rest) = rest.split_at_mut(hu);
    let (zg, zo) = rest.split_at_mut(hu);
    let zo = &mut zo[..hu];
    rule.recurrent_activation.apply_slice(zi);
    rule.recurrent_activation.apply_slice(zf);
    rule.activation.apply_slice(zg);
    rule.recurrent_activation.apply_slice(zo);
    let c = &mut c[..hu];
    // c_t = f * c_{t-1} + i * g; zg then holds activation(c_t).
    for j in 0..hu {
        c[j] = zf[j] * c[j] + zi[j] * zg[j];
        zg[j] = c[j];
    }
    rule.activation.apply_slice(zg);
    let out = &mut out[..hu];
    for j in 0..hu {
        h[j] = zo[j] * zg[j];
        out[j] = h[j];
    }
}

/// The time loop. Returns (sequence [B, T, H] in processing order, last output [B, H],
/// final state).
pub(crate) fn run<T: Element>(
    config: &LstmConfig,
    weights: &LstmWeights<T>,
    x: ArrayView3<T>,
    start: LstmState<T>,
    mask: Option<ArrayView2<bool>>,
) -> (Array3<T>, Array2<T>, LstmState<T>) {
    let (b, t, _) = x.dim();
    let hu = config.units;
    let rule = StepRule::of(config);
    let proj = project_inputs(x, weights);
    let proj = proj
        .into_shape_with_order((b, t, 4 * hu))
        .expect("[B·T, 4H] reshapes to [B, T, 4H]");
    let LstmState { mut h, mut c } = start;
    let mut out = Array2::<T>::zeros((b, hu));
    let mut sequence = Array3::<T>::zeros((b, t, hu));
    let mut z = Array2::<T>::zeros((b, 4 * hu));
    for step in 0..t {
        let time = if config.go_backwards {
            t - 1 - step
        } else {
            step
        };
        // z = proj[:, time, :] + h · R
        z.assign(&proj.slice(s![.., time, ..]));
        matmul(
            h.view(),
            weights.recurrent_kernel.view(),
            z.view_mut(),
            true,
        );
        let present = |row: usize| mask.is_none_or(|m| m[[row, time]]);
        let rows = z
            .as_slice_mut()
            .expect("z is standard layout")
            .chunks_mut(4 * hu)
            .zip(
                h.as_slice_mut()
                    .expect("h is standard layout")
                    .chunks_mut(hu),
            )
            .zip(
                c.as_slice_mut()
                    .expect("c is standard layout")
                    .chunks_mut(hu),
            )
            .zip(
                out.as_slice_mut()
                    .expect("out is standard layout")
                    .chunks_mut(hu),
            )
            .enumerate();
        if b * hu >= PARALLEL_MIN_ELEMENTS {
            use rayon::prelude::*;
            let rows: Vec<_> = rows.collect();
            rows.into_par_iter()
                .for_each(|(row, (((zr, hr), cr), or))| {
                    cell_update(rule, zr, hr, cr, or, present(row))
                });
        } else {
            for (row, (((zr, hr), cr), or)) in rows {
                cell_update(rule, zr, hr, cr, or, present(row));
            }
        }
        sequence.index_axis_mut(Axis(1), step).assign(&out);
    }
    (sequence, out, LstmState { h, c })
}
