//! The generic CPU path: the reference every fast path is tested against, and the path of f64
//! and of CPUs without AVX2/FMA. Its functions are the twins of the kernels:
//! [`project_inputs`] of `shaders/projection.wgsl` (all timesteps' `x · kernel + bias` as one
//! matrix product), [`cell_update`] of the element-wise part of `shaders/step.wgsl` and
//! `shaders/sequence.wgsl` (gates, cell update, mask rule), and [`run`] of their time loop (the
//! recurrent product `h · R` of each step as one matrix product).

use crate::config::LstmConfig;
use crate::element::Element;
use crate::output::LstmState;
use crate::weights::LstmWeights;
use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis};

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
    c: ArrayViewMut2<T>,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    let parallel = m * n * k >= PARALLEL_MIN_MACS;
    matmul_on(a, b, c, accumulate, parallel)
}

/// [`matmul`] on the calling thread only (for work already spread over the cores).
pub(crate) fn matmul_serial<T: Element>(
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    c: ArrayViewMut2<T>,
    accumulate: bool,
) {
    matmul_on(a, b, c, accumulate, false)
}

fn matmul_on<T: Element>(
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    mut c: ArrayViewMut2<T>,
    accumulate: bool,
    parallel: bool,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    assert!(
        b.nrows() == k && c.dim() == (m, n),
        "matmul shapes: [{m}, {k}] x {:?} -> {:?}",
        b.dim(),
        c.dim()
    );
    let parallelism = if parallel {
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
    let n = weights.kernel.ncols();
    let x2 = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((b * t, i))
        .expect("a standard-layout [B, T, I] array reshapes to [B·T, I]");
    // (a GRU with reset_after has its recurrent bias after the n input-bias entries)
    let mut proj = match &weights.bias {
        Some(bias) => bias
            .slice(s![..n])
            .broadcast((b * t, n))
            .expect("bias is [G·H]")
            .to_owned(),
        None => Array2::zeros((b * t, n)),
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
    // Compiled for the instruction set the CPU kernels use (LSTM_WGPU_CPU_ISA caps it).
    #[cfg(target_arch = "x86_64")]
    match super::simd::Isa::detect() {
        // SAFETY: `detect` returns only a set this CPU has.
        Some(super::simd::Isa::Avx512) => unsafe {
            cell_update_avx512(rule, z, h, c, out, present)
        },
        // SAFETY: as above (AVX2 and FMA).
        Some(super::simd::Isa::Avx2) => unsafe { cell_update_avx2(rule, z, h, c, out, present) },
        None => cell_update_impl(rule, z, h, c, out, present),
    }
    #[cfg(not(target_arch = "x86_64"))]
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
/// final state). GRU and SimpleRNN layers run the loop of `cells.rs`.
pub(crate) fn run<T: Element>(
    config: &LstmConfig,
    weights: &LstmWeights<T>,
    x: ArrayView3<T>,
    start: LstmState<T>,
    mask: Option<ArrayView2<bool>>,
) -> (Array3<T>, Array2<T>, LstmState<T>) {
    if config.cell != crate::config::Cell::Lstm {
        return super::cells::run(config, weights, x, start, mask);
    }
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
