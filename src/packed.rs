//! The fast f32 kernels of the CPU path: weights packed once into panels, a register-tiled
//! product with AVX-512 or AVX2/FMA (chosen at run time), and the cell update fused into the
//! recurrent product so each step's gates never leave the cache.
//!
//! The work is split as in [`crate::cpu`] and on the GPU: `project_rows` is the input
//! projection of all timesteps (the twin of `shaders/projection.wgsl`), `step_panels` one
//! timestep's recurrent product plus the cell update (the twin of `shaders/step.wgsl`). For
//! batches of at least `FUSED_MIN_BATCH` rows the step also does its own input projection
//! (one product over `[x_t, h]`), which measured faster than a separate pass. The generic
//! path in [`crate::cpu`] stays the reference (and runs f64 and CPUs without these
//! instructions); a test holds the two within rounding of each other.
//!
//! **Layout.** A *panel* holds the four gates (i, f, c, o) of 16 consecutive units: 64
//! columns. Packed weights are `[panel][k][64]`, so one panel's columns for one `k` are one
//! contiguous 256-byte row. The state (`h`, `c`, the last output) is kept panel-major,
//! `[panel][B][16]`, so that the panels a thread owns are one contiguous slice of each buffer.
//! Units past H (the last panel's padding) have zero weights; they are computed and never read.

use crate::cpu::{cell_update_impl, LstmState, StepRule};
use crate::element::Element;
use crate::weights::LstmWeights;
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use rayon::prelude::*;
use std::any::TypeId;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Units per panel.
const UNITS: usize = 16;
/// Columns per panel: the four gates of `UNITS` units.
const COLS: usize = 4 * UNITS;
/// Rows of the input projection one block works on (the block's rows stay in L2 while each
/// panel is applied to them).
const ROW_BLOCK: usize = 96;
/// Multiply-adds per timestep below which a step runs on one thread. Splitting a step costs
/// a spin-wait on a shared counter (well under a microsecond); measured on 2 cores, batch 1:
/// H = 128 (65 536 per step) ran 1.5-1.8x faster split, H = 64 (16 384) no faster.
const STEP_PARALLEL_MIN_MACS: usize = 1 << 15;
/// Batches at least this big project each step's input inside the step (the tile is then
/// full, and the `[B·T, 4H]` projection never goes through memory); smaller ones project all
/// timesteps first, as one product with T·B rows. Measured on 2 cores: fused 1.05-1.3x
/// faster at B = 32, 64 and 256.
const FUSED_MIN_BATCH: usize = 6;
/// Multiply-adds below which the projection runs on the calling thread.
const PROJECTION_PARALLEL_MIN_MACS: usize = 1 << 20;

/// The instruction set the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// 16 lanes, up to 6 rows per tile.
    Avx512,
    /// 8 lanes with FMA, one row per tile: AVX2 has 16 registers, and a row's 64 columns
    /// take 8 (measured on AVX2 code here: 1 row per tile 1.2-1.9x faster than 2 or 3).
    Avx2,
}

impl Isa {
    /// The best set this CPU has, or None (then the generic path runs).
    /// `LSTM_WGPU_CPU_ISA=generic` or `avx2` caps the choice (to time or test the other
    /// paths on one machine); a set the CPU lacks is never chosen.
    pub(crate) fn detect() -> Option<Isa> {
        let cap = std::env::var("LSTM_WGPU_CPU_ISA").unwrap_or_default();
        if cap.eq_ignore_ascii_case("generic") {
            return None;
        }
        let allow_avx512 = !cap.eq_ignore_ascii_case("avx2");
        #[cfg(target_arch = "x86_64")]
        {
            if allow_avx512 && std::arch::is_x86_feature_detected!("avx512f") {
                return Some(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Some(Isa::Avx2);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = allow_avx512;
        None
    }
}

/// One layer's f32 weights in panels, built once when the layer is built.
#[derive(Debug)]
pub(crate) struct PackedWeights {
    isa: Isa,
    units: usize,
    input: usize,
    panels: usize,
    /// `[panel][input][64]`.
    kernel: Vec<f32>,
    /// `[panel][units][64]`.
    recurrent: Vec<f32>,
    /// `[panel][64]` (zeros without a bias).
    bias: Vec<f32>,
}

/// Reorders a Keras `[k, 4H]` matrix (gate blocks i, f, c, o) into `[panel][k][64]`.
fn pack_matrix(m: ArrayView2<f32>, units: usize, panels: usize) -> Vec<f32> {
    let k = m.nrows();
    let mut out = vec![0.0f32; panels * k * COLS];
    for p in 0..panels {
        for row in 0..k {
            let dst = &mut out[(p * k + row) * COLS..][..COLS];
            for gate in 0..4 {
                for lane in 0..UNITS {
                    let unit = p * UNITS + lane;
                    if unit < units {
                        dst[gate * UNITS + lane] = m[[row, gate * units + unit]];
                    }
                }
            }
        }
    }
    out
}

/// Views `a` as f32 when `T` is f32.
fn f32_slice<T: Element>(a: &[T]) -> Option<&[f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| bytemuck::cast_slice(a))
}

/// Mutable twin of [`f32_slice`].
fn f32_slice_mut<T: Element>(a: &mut [T]) -> Option<&mut [f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| bytemuck::cast_slice_mut(a))
}

impl PackedWeights {
    /// Packs `weights` when `T` is f32 and the CPU has one of the instruction sets; None
    /// otherwise (the layer then runs on the generic path).
    pub(crate) fn new<T: Element>(weights: &LstmWeights<T>) -> Option<PackedWeights> {
        Self::with_isa(weights, Isa::detect()?)
    }

    /// [`PackedWeights::new`] for a given instruction set, which the CPU must have.
    fn with_isa<T: Element>(weights: &LstmWeights<T>, isa: Isa) -> Option<PackedWeights> {
        let kernel = weights.kernel.as_standard_layout();
        let recurrent = weights.recurrent_kernel.as_standard_layout();
        let kernel = ArrayView2::from_shape(kernel.dim(), f32_slice(kernel.as_slice()?)?).ok()?;
        let recurrent =
            ArrayView2::from_shape(recurrent.dim(), f32_slice(recurrent.as_slice()?)?).ok()?;
        let units = recurrent.nrows();
        let panels = units.div_ceil(UNITS);
        let bias = match &weights.bias {
            Some(b) => {
                let b = b.as_standard_layout();
                let b = f32_slice(b.as_slice()?)?;
                let b = ArrayView2::from_shape((1, b.len()), b).ok()?;
                pack_matrix(b, units, panels)
            }
            None => vec![0.0; panels * COLS],
        };
        Some(PackedWeights {
            isa,
            units,
            input: kernel.nrows(),
            panels,
            kernel: pack_matrix(kernel, units, panels),
            recurrent: pack_matrix(recurrent, units, panels),
            bias,
        })
    }
}

/// The few vector operations the kernels use, for one register width.
trait Lanes: Copy {
    /// f32 lanes per register.
    const N: usize;
    /// Most rows one tile holds in registers (accumulators = rows · 64 / N).
    const MAX_ROWS: usize;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn splat(x: f32) -> Self;
    /// `a · b + c`.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    unsafe fn div(a: Self, b: Self) -> Self;
    /// `max(x, bound)`; a NaN in `x` stays NaN.
    unsafe fn max(x: Self, bound: Self) -> Self;
    /// `min(x, bound)`; a NaN in `x` stays NaN.
    unsafe fn min(x: Self, bound: Self) -> Self;
    /// Rounds to the nearest integer (ties to even).
    unsafe fn round(x: Self) -> Self;
    /// `y · 2^n` for integral `n` in [-126, 127].
    unsafe fn scale2(y: Self, n: Self) -> Self;
    /// `then` where `x < bound`, else `other` (a NaN in `x` gives `other`).
    unsafe fn where_below(x: Self, bound: Self, then: Self, other: Self) -> Self;
}

/// Vector `e^x` (the same Cephes reduction and polynomial as `exp_f32`; the argument is
/// clamped to [-87.3, 88], where f32 `e^x` is finite and normal; NaN stays NaN).
#[allow(clippy::excessive_precision)]
#[inline(always)]
unsafe fn exp<V: Lanes>(x: V) -> V {
    let x = V::min(V::max(x, V::splat(-87.3)), V::splat(88.0));
    let n = V::round(V::mul(x, V::splat(std::f32::consts::LOG2_E)));
    let r = V::fma(n, V::splat(-0.693_359_4), x);
    let r = V::fma(n, V::splat(2.121_944_4e-4), r);
    let mut p = V::splat(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5.000_000_1e-1,
    ] {
        p = V::fma(p, r, V::splat(c));
    }
    let y = V::fma(V::mul(p, r), r, V::add(r, V::splat(1.0)));
    V::scale2(y, n)
}

/// Vector logistic sigmoid, `1 / (1 + e^-x)`: exactly 0 where `e^-x` overflows f32 (as the
/// generic path's and Keras's, so that 0 · inf gives NaN there too), NaN for NaN.
#[inline(always)]
unsafe fn sigmoid<V: Lanes>(x: V) -> V {
    let one = V::splat(1.0);
    let s = V::div(one, V::add(one, exp(V::mul(x, V::splat(-1.0)))));
    V::where_below(x, V::splat(-88.722_84), V::splat(0.0), s)
}

/// The activations the fused step epilogue computes in registers; the others go through
/// `cell_update_impl`.
fn in_registers(a: crate::Activation) -> bool {
    use crate::Activation::*;
    matches!(
        a,
        Sigmoid | Tanh | HardSigmoid | HardSigmoidKeras2 | Relu | Linear
    )
}

/// One of the [`in_registers`] activations on a vector. `tanh` is `2·sigmoid(2x) - 1`
/// (absolute error below 3e-7).
#[inline(always)]
unsafe fn activate<V: Lanes>(a: crate::Activation, x: V) -> V {
    use crate::Activation::*;
    let zero = V::splat(0.0);
    match a {
        Sigmoid => sigmoid(x),
        Tanh => V::fma(sigmoid(V::add(x, x)), V::splat(2.0), V::splat(-1.0)),
        HardSigmoid => V::div(
            V::min(V::max(V::add(x, V::splat(3.0)), zero), V::splat(6.0)),
            V::splat(6.0),
        ),
        HardSigmoidKeras2 => V::min(
            V::max(V::fma(x, V::splat(0.2), V::splat(0.5)), zero),
            V::splat(1.0),
        ),
        Relu => V::max(x, zero),
        _ => x,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    impl Lanes for Avx512 {
        const N: usize = 16;
        const MAX_ROWS: usize = 6;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx512(_mm512_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Avx512(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            Avx512(_mm512_add_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            Avx512(_mm512_mul_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn div(a: Self, b: Self) -> Self {
            Avx512(_mm512_div_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn max(x: Self, bound: Self) -> Self {
            // (the second operand is returned when either is NaN)
            Avx512(_mm512_max_ps(bound.0, x.0))
        }
        #[inline(always)]
        unsafe fn min(x: Self, bound: Self) -> Self {
            Avx512(_mm512_min_ps(bound.0, x.0))
        }
        #[inline(always)]
        unsafe fn round(x: Self) -> Self {
            Avx512(_mm512_roundscale_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(x.0))
        }
        #[inline(always)]
        unsafe fn scale2(y: Self, n: Self) -> Self {
            Avx512(_mm512_scalef_ps(y.0, n.0))
        }
        #[inline(always)]
        unsafe fn where_below(x: Self, bound: Self, then: Self, other: Self) -> Self {
            let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x.0, bound.0);
            Avx512(_mm512_mask_blend_ps(below, other.0, then.0))
        }
    }

    impl Lanes for Avx2 {
        const N: usize = 8;
        const MAX_ROWS: usize = 1;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx2(_mm256_set1_ps(x))
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Avx2(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            Avx2(_mm256_add_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            Avx2(_mm256_mul_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn div(a: Self, b: Self) -> Self {
            Avx2(_mm256_div_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn max(x: Self, bound: Self) -> Self {
            // (the second operand is returned when either is NaN)
            Avx2(_mm256_max_ps(bound.0, x.0))
        }
        #[inline(always)]
        unsafe fn min(x: Self, bound: Self) -> Self {
            Avx2(_mm256_min_ps(bound.0, x.0))
        }
        #[inline(always)]
        unsafe fn round(x: Self) -> Self {
            Avx2(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(x.0))
        }
        #[inline(always)]
        unsafe fn scale2(y: Self, n: Self) -> Self {
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n.0),
                _mm256_set1_epi32(127),
            ));
            Avx2(_mm256_mul_ps(y.0, _mm256_castsi256_ps(bits)))
        }
        #[inline(always)]
        unsafe fn where_below(x: Self, bound: Self, then: Self, other: Self) -> Self {
            let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x.0, bound.0);
            Avx2(_mm256_blendv_ps(other.0, then.0, below))
        }
    }
}

/// `acc[r] += Σ_k a(r, k) · b[k]` for `R` rows and one panel (`NV` registers = 64 columns).
/// Row r's `k`-th value is at `a + r·rs + (k / 16)·ps + k % 16` (row-major input: `rs` = K,
/// `ps` = 16; panel-major state: `rs` = 16, `ps` = 16·B); `b` is the panel, `[k][64]`.
///
/// # Safety
/// The CPU has `V`'s instructions, `NV · V::N = 64`, and every address above is in bounds.
#[inline(always)]
unsafe fn tile<V: Lanes, const R: usize, const NV: usize>(
    mut acc: [[V; NV]; R],
    k: usize,
    a: *const f32,
    rs: usize,
    ps: usize,
    b: *const f32,
) -> [[V; NV]; R] {
    let mut bp = b;
    let mut k0 = 0;
    while k0 < k {
        let a0 = a.add((k0 / UNITS) * ps);
        for kk in 0..(k - k0).min(UNITS) {
            let mut bv = [V::splat(0.0); NV];
            for (v, reg) in bv.iter_mut().enumerate() {
                *reg = V::load(bp.add(v * V::N));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = V::splat(*a0.add(r * rs + kk));
                for (sum, &w) in row.iter_mut().zip(bv.iter()) {
                    *sum = V::fma(av, w, *sum);
                }
            }
            bp = bp.add(COLS);
        }
        k0 += UNITS;
    }
    acc
}

/// Loads `R` rows of one panel (64 values each, rows `stride` apart).
#[inline(always)]
unsafe fn load_rows<V: Lanes, const R: usize, const NV: usize>(
    p: *const f32,
    stride: usize,
) -> [[V; NV]; R] {
    let mut acc = [[V::splat(0.0); NV]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (v, reg) in row.iter_mut().enumerate() {
            *reg = V::load(p.add(r * stride + v * V::N));
        }
    }
    acc
}

/// Stores `R` rows of one panel (64 values each, rows `stride` apart).
#[inline(always)]
unsafe fn store_rows<V: Lanes, const R: usize, const NV: usize>(
    acc: [[V; NV]; R],
    p: *mut f32,
    stride: usize,
) {
    for (r, row) in acc.iter().enumerate() {
        for (v, reg) in row.iter().enumerate() {
            reg.store(p.add(r * stride + v * V::N));
        }
    }
}

/// Calls `$f::<V, R, NV>($args)` with the const row count R = `$rows` (1..=6).
macro_rules! by_rows {
    ($rows:expr, $f:ident::<$v:ident, $nv:ident>($($arg:expr),*)) => {
        match $rows {
            1 => $f::<$v, 1, $nv>($($arg),*),
            2 => $f::<$v, 2, $nv>($($arg),*),
            3 => $f::<$v, 3, $nv>($($arg),*),
            4 => $f::<$v, 4, $nv>($($arg),*),
            5 => $f::<$v, 5, $nv>($($arg),*),
            _ => $f::<$v, 6, $nv>($($arg),*),
        }
    };
}

/// One tile of the projection: rows `r0..r0+R` of `x [rows, I]`, panel `p`, plus the bias,
/// into `out [rows, panels·64]`.
#[inline(always)]
unsafe fn project_tile<V: Lanes, const R: usize, const NV: usize>(
    w: &PackedWeights,
    x: &[f32],
    out: &mut [f32],
    r0: usize,
    p: usize,
) {
    let i = w.input;
    let width = w.panels * COLS;
    debug_assert!((r0 + R) * i <= x.len() && (r0 + R) * width <= out.len());
    let mut acc = load_rows::<V, R, NV>(w.bias.as_ptr().add(p * COLS), 0);
    acc = tile::<V, R, NV>(
        acc,
        i,
        x.as_ptr().add(r0 * i),
        i,
        UNITS,
        w.kernel.as_ptr().add(p * i * COLS),
    );
    store_rows::<V, R, NV>(acc, out.as_mut_ptr().add(r0 * width + p * COLS), width);
}

/// The projection of `x [rows, I]` into `out [rows, panels·64]` (bias included), on the
/// calling thread.
#[inline(always)]
unsafe fn project_rows<V: Lanes, const NV: usize>(w: &PackedWeights, x: &[f32], out: &mut [f32]) {
    let rows = out.len() / (w.panels * COLS);
    for b0 in (0..rows).step_by(ROW_BLOCK) {
        let b1 = (b0 + ROW_BLOCK).min(rows);
        for p in 0..w.panels {
            let mut r0 = b0;
            while r0 < b1 {
                let r = (b1 - r0).min(V::MAX_ROWS);
                by_rows!(r, project_tile::<V, NV>(w, x, out, r0, p));
                r0 += r;
            }
        }
    }
}

/// What one timestep reads: everything but the slices a thread writes.
struct StepInput<'a> {
    w: &'a PackedWeights,
    rule: StepRule,
    batch: usize,
    steps: usize,
    /// The step's position in the sequence (processing order).
    step: usize,
    /// The timestep of `x` this step reads.
    time: usize,
    /// `[B·T, panels·64]`, row `b·T + t`; empty when each step projects its own input.
    proj: &'a [f32],
    /// The input `[B, T, I]`.
    x: &'a [f32],
    /// The previous hidden state, `[panels][B][16]`.
    h_old: &'a [f32],
    /// The mask `[B, T]` (None: every step present).
    mask: Option<ArrayView2<'a, bool>>,
    /// Both activations are computed in registers (see [`in_registers`]).
    fast: bool,
}

impl StepInput<'_> {
    /// Batch row `b` is present at this step.
    #[inline(always)]
    fn present(&self, b: usize) -> bool {
        self.mask.is_none_or(|m| m[[b, self.time]])
    }
}

/// Hands out the work items (step, chunk) of the time loop to the threads that ask, in order,
/// and lets a step's chunks start only once every chunk of the step before is done.
///
/// No thread ever waits for one that has not claimed work, so a helper that starts late (or
/// never) only means the others do more: the caller's thread alone finishes everything.
/// Waiting is a spin on one counter (a step of a small layer takes microseconds, far less
/// than a sleep and wake-up), yielding the core after a while.
struct Tickets {
    next: AtomicUsize,
    done: AtomicUsize,
    chunks: usize,
    total: usize,
}

impl Tickets {
    fn new(steps: usize, chunks: usize) -> Self {
        Tickets {
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            chunks,
            total: steps * chunks,
        }
    }

    /// Claims and runs items until none are left.
    fn work(&self, run: &(impl Fn(usize, usize) + Sync)) {
        loop {
            let t = self.next.fetch_add(1, Ordering::Relaxed);
            if t >= self.total {
                return;
            }
            let (step, chunk) = (t / self.chunks, t % self.chunks);
            let needed = step * self.chunks;
            let mut spins = 0u32;
            while self.done.load(Ordering::Acquire) < needed {
                spins += 1;
                if spins < 1 << 12 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            run(step, chunk);
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// A buffer the step threads share: each chunk writes only its own part, and a step reads
/// the other buffer of `h` only after the step before it is done ([`Tickets`] orders them).
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);
// SAFETY: see the type's documentation; the accesses through it are disjoint or ordered.
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The slices of the panels `p0..` one thread writes, each panel-major, and the output
/// sequence.
struct StepOutput<'a> {
    p0: usize,
    /// `[n][B][16]` each.
    h_new: &'a mut [f32],
    c: &'a mut [f32],
    out: &'a mut [f32],
    /// The output sequence `[B, T, H]` (processing order): this thread writes the columns of
    /// its panels at row `step` of every batch row, and no other thread writes those.
    sequence: SharedPtr,
}

/// Rows `b0..b0+R` of panel `p` (the `pl`-th of `o`): `z = proj + h_old · R`, then the cell
/// update of those rows' 16 units.
#[inline(always)]
unsafe fn step_tile<V: Lanes, const R: usize, const NV: usize>(
    s: &StepInput,
    o: &mut StepOutput,
    pl: usize,
    b0: usize,
) {
    let w = s.w;
    let p = o.p0 + pl;
    let width = w.panels * COLS;
    let bsz = s.batch;
    let mut acc = if s.proj.is_empty() {
        // Fused: this step's input projection, `bias + x[b, time] · kernel`, first.
        debug_assert!(((b0 + R - 1) * s.steps + s.time + 1) * w.input <= s.x.len());
        let acc = load_rows::<V, R, NV>(w.bias.as_ptr().add(p * COLS), 0);
        tile::<V, R, NV>(
            acc,
            w.input,
            s.x.as_ptr().add((b0 * s.steps + s.time) * w.input),
            s.steps * w.input,
            UNITS,
            w.kernel.as_ptr().add(p * w.input * COLS),
        )
    } else {
        debug_assert!(((b0 + R - 1) * s.steps + s.time + 1) * width <= s.proj.len());
        load_rows::<V, R, NV>(
            s.proj
                .as_ptr()
                .add((b0 * s.steps + s.time) * width + p * COLS),
            s.steps * width,
        )
    };
    acc = tile::<V, R, NV>(
        acc,
        w.units,
        s.h_old.as_ptr().add(b0 * UNITS),
        UNITS,
        UNITS * bsz,
        w.recurrent.as_ptr().add(p * w.units * COLS),
    );
    let n = (w.units - p * UNITS).min(UNITS);
    if s.fast && (b0..b0 + R).all(|b| s.present(b)) {
        let rule = s.rule;
        let q = NV / 4;
        for (r, z) in acc.iter().enumerate() {
            let b = b0 + r;
            let at = (pl * bsz + b) * UNITS;
            let c = o.c.as_mut_ptr().add(at);
            let h = o.h_new.as_mut_ptr().add(at);
            let out = o.out.as_mut_ptr().add(at);
            let seq = o
                .sequence
                .0
                .add((b * s.steps + s.step) * w.units + p * UNITS);
            for j in 0..q {
                let i = activate(rule.recurrent_activation, z[j]);
                let f = activate(rule.recurrent_activation, z[q + j]);
                let g = activate(rule.activation, z[2 * q + j]);
                let og = activate(rule.recurrent_activation, z[3 * q + j]);
                let cj = c.add(j * V::N);
                let cn = V::fma(f, V::load(cj), V::mul(i, g));
                cn.store(cj);
                let hn = V::mul(og, activate(rule.activation, cn));
                hn.store(h.add(j * V::N));
                hn.store(out.add(j * V::N));
                if n == UNITS {
                    // SAFETY: as below (a whole panel of this row: 16 columns inside H).
                    hn.store(seq.add(j * V::N));
                }
            }
            if n < UNITS {
                // SAFETY: as below.
                std::ptr::copy_nonoverlapping(out, seq, n);
            }
        }
        return;
    }
    let mut z = [[0.0f32; COLS]; R];
    store_rows::<V, R, NV>(acc, z.as_mut_ptr().cast(), COLS);
    for (r, zr) in z.iter_mut().enumerate() {
        let b = b0 + r;
        let at = (pl * bsz + b) * UNITS;
        let h = &mut o.h_new[at..at + UNITS];
        let present = s.present(b);
        if !present {
            h.copy_from_slice(&s.h_old[(p * bsz + b) * UNITS..][..UNITS]);
        }
        let out = &mut o.out[at..at + UNITS];
        cell_update_impl(s.rule, zr, h, &mut o.c[at..at + UNITS], out, present);
        let seq = (b * s.steps + s.step) * w.units + p * UNITS;
        // SAFETY: `seq + n` ≤ B·T·H (b < B, step < T, p·16 + n ≤ H), and these elements
        // belong to this panel (see `StepOutput::sequence`).
        std::ptr::copy_nonoverlapping(out.as_ptr(), o.sequence.0.add(seq), n);
    }
}

/// One timestep for the panels of `o`, all batch rows.
#[inline(always)]
unsafe fn step_panels<V: Lanes, const NV: usize>(s: &StepInput, o: &mut StepOutput) {
    let n = o.c.len() / (s.batch * UNITS);
    for pl in 0..n {
        let mut b0 = 0;
        while b0 < s.batch {
            let r = (s.batch - b0).min(V::MAX_ROWS);
            by_rows!(r, step_tile::<V, NV>(s, o, pl, b0));
            b0 += r;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn project_avx512(w: &PackedWeights, x: &[f32], out: &mut [f32]) {
    project_rows::<x86::Avx512, 4>(w, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn project_avx2(w: &PackedWeights, x: &[f32], out: &mut [f32]) {
    project_rows::<x86::Avx2, 8>(w, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn step_avx512(s: &StepInput, o: &mut StepOutput) {
    step_panels::<x86::Avx512, 4>(s, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn step_avx2(s: &StepInput, o: &mut StepOutput) {
    step_panels::<x86::Avx2, 8>(s, o)
}

/// Runs the projection of `x [rows, I]` into `out [rows, panels·64]` with the packed kernel.
fn project_chunk(w: &PackedWeights, x: &[f32], out: &mut [f32]) {
    let rows = out.len() / (w.panels * COLS);
    assert!(x.len() == rows * w.input, "projection input is [rows, I]");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `w.isa` was detected on this CPU, and the slices' lengths were checked above
    // (every address the tiles touch is inside `x`, `out` and the packed weights).
    unsafe {
        match w.isa {
            Isa::Avx512 => project_avx512(w, x, out),
            Isa::Avx2 => project_avx2(w, x, out),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no packed kernels on this architecture ({w:?} was never built)")
}

/// One timestep for the panels of `o`.
fn step_chunk(s: &StepInput, o: &mut StepOutput) {
    let n = o.c.len() / (s.batch * UNITS);
    assert!(
        o.p0 + n <= s.w.panels
            && o.h_new.len() == o.c.len()
            && o.out.len() == o.c.len()
            && s.h_old.len() == s.w.panels * s.batch * UNITS
            && (s.proj.is_empty() || s.proj.len() == s.batch * s.steps * s.w.panels * COLS)
            && s.x.len() == s.batch * s.steps * s.w.input
            && s.mask.is_none_or(|m| m.dim() == (s.batch, s.steps))
            && s.step < s.steps
            && s.time < s.steps,
        "step buffers match the layer"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `w.isa` was detected on this CPU; the buffer sizes were checked above.
    unsafe {
        match s.w.isa {
            Isa::Avx512 => step_avx512(s, o),
            Isa::Avx2 => step_avx2(s, o),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "no packed kernels on this architecture ({:?} was never built)",
        s.w
    )
}

/// `[B, H]` to panel-major `[panels][B][16]` (padding zero).
fn to_panels(a: ArrayView2<f32>, panels: usize) -> Vec<f32> {
    let (b, h) = a.dim();
    let mut out = vec![0.0f32; panels * b * UNITS];
    for ((row, unit), &v) in a.indexed_iter() {
        out[((unit / UNITS) * b + row) * UNITS + unit % UNITS] = v;
    }
    debug_assert!(h <= panels * UNITS);
    out
}

/// Panel-major `[panels][B][16]` into `dst [B, H]`.
fn from_panels(src: &[f32], dst: &mut [f32], batch: usize, units: usize) {
    for row in 0..batch {
        for unit in 0..units {
            dst[row * units + unit] = src[((unit / UNITS) * batch + row) * UNITS + unit % UNITS];
        }
    }
}

/// The packed twin of [`crate::cpu::run`]: the same results (within rounding), f32 only.
/// Returns None when `T` is not f32 (the caller then runs the generic path). `scratch` holds
/// the projection between calls, so repeated calls allocate nothing for it.
#[allow(clippy::type_complexity)]
pub(crate) fn run<T: Element>(
    w: &PackedWeights,
    rule: StepRule,
    go_backwards: bool,
    x: ArrayView3<T>,
    start: &LstmState<T>,
    mask: Option<ArrayView2<bool>>,
    scratch: &mut Vec<f32>,
) -> Option<(Array3<T>, Array2<T>, LstmState<T>)> {
    let (batch, steps, input) = x.dim();
    let units = w.units;
    let x = x.as_standard_layout();
    let xs = f32_slice(x.as_slice()?)?;
    let h0 = start.h.as_standard_layout();
    let c0 = start.c.as_standard_layout();
    let h0 = ArrayView2::from_shape((batch, units), f32_slice(h0.as_slice()?)?).ok()?;
    let c0 = ArrayView2::from_shape((batch, units), f32_slice(c0.as_slice()?)?).ok()?;
    // (`f32_slice` returned Some above, so T is f32.)
    if input != w.input {
        return None;
    }
    let width = w.panels * COLS;
    let rows = batch * steps;
    let macs = batch * units * width;
    let tasks = if macs >= STEP_PARALLEL_MIN_MACS {
        rayon::current_num_threads().min(w.panels)
    } else {
        1
    };
    let parallel_projection =
        rows * input * width >= PROJECTION_PARALLEL_MIN_MACS && rayon::current_num_threads() > 1;
    let fused = batch >= FUSED_MIN_BATCH;
    let proj_len = if fused { 0 } else { rows * width };
    scratch.resize(proj_len, 0.0);
    let proj = &mut scratch[..proj_len];
    let mut sequence = Array3::<T>::uninit((batch, steps, units));
    // (T is f32.)
    let seq_ptr = SharedPtr(sequence.as_mut_ptr().cast());
    // The two buffers of h: step s reads `h_a` when s is even and writes the other.
    let mut h_a = to_panels(h0, w.panels);
    let mut c = to_panels(c0, w.panels);
    let state_len = w.panels * batch * UNITS;
    let mut h_b = vec![0.0f32; state_len];
    let mut out = vec![0.0f32; state_len];

    // Fused steps project their own input; otherwise all timesteps are projected first.
    if !fused && parallel_projection {
        let chunk = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
        proj.par_chunks_mut(chunk * width)
            .zip(xs.par_chunks(chunk * input))
            .for_each(|(out, x)| project_chunk(w, x, out));
    } else if !fused {
        project_chunk(w, xs, proj);
    }
    let proj = &*proj;
    let fast = in_registers(rule.activation) && in_registers(rule.recurrent_activation);
    let per_task = w.panels.div_ceil(tasks);
    let chunks = w.panels.div_ceil(per_task);
    let chunk_len = per_task * batch * UNITS;
    let hs = [SharedPtr(h_a.as_mut_ptr()), SharedPtr(h_b.as_mut_ptr())];
    let (c_ptr, out_ptr) = (SharedPtr(c.as_mut_ptr()), SharedPtr(out.as_mut_ptr()));
    let run_item = |step: usize, chunk: usize| {
        let time = if go_backwards { steps - 1 - step } else { step };
        let start = chunk * chunk_len;
        let len = chunk_len.min(state_len - start);
        // SAFETY: step `step` reads h buffer `step % 2` whole and writes chunk `chunk` of
        // the other, of c and of out; no other item of this step touches that chunk, and
        // items of other steps are ordered before or after this one (`Tickets`, or the
        // plain loop below), so no slice here aliases a live mutable one.
        let (h_old, h_new, c, out) = unsafe {
            (
                std::slice::from_raw_parts(hs[step % 2].get(), state_len),
                std::slice::from_raw_parts_mut(hs[(step + 1) % 2].get().add(start), len),
                std::slice::from_raw_parts_mut(c_ptr.get().add(start), len),
                std::slice::from_raw_parts_mut(out_ptr.get().add(start), len),
            )
        };
        let input = StepInput {
            w,
            rule,
            batch,
            steps,
            step,
            time,
            proj,
            x: xs,
            h_old,
            mask,
            fast,
        };
        let mut output = StepOutput {
            p0: chunk * per_task,
            h_new,
            c,
            out,
            sequence: seq_ptr,
        };
        step_chunk(&input, &mut output);
    };
    if chunks == 1 {
        for step in 0..steps {
            run_item(step, 0);
        }
    } else {
        let tickets = Tickets::new(steps, chunks);
        rayon::scope(|scope| {
            for _ in 1..chunks.min(rayon::current_num_threads()) {
                scope.spawn(|_| tickets.work(&run_item));
            }
            tickets.work(&run_item);
        });
    }
    // SAFETY: every step wrote every batch row's H columns of its row of the sequence.
    let sequence = unsafe { sequence.assume_init() };

    let mut last = Array2::<T>::zeros((batch, units));
    let mut h = Array2::<T>::zeros((batch, units));
    let mut c_out = Array2::<T>::zeros((batch, units));
    from_panels(&out, f32_slice_mut(last.as_slice_mut()?)?, batch, units);
    let h_last = if steps % 2 == 0 { &h_a } else { &h_b };
    from_panels(h_last, f32_slice_mut(h.as_slice_mut()?)?, batch, units);
    from_panels(&c, f32_slice_mut(c_out.as_slice_mut()?)?, batch, units);
    Some((sequence, last, LstmState { h, c: c_out }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Activation, LstmConfig};
    use ndarray::Array;
    use rand::{rngs::StdRng, RngExt, SeedableRng};

    /// The instruction sets this CPU can run.
    fn isas() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa::Avx2);
            }
        }
        v
    }

    /// The packed kernels against the generic path on random layers: odd sizes (padding, row
    /// remainders), masks, go_backwards, initial states, both threading modes.
    #[test]
    fn packed_matches_generic_path() {
        const GATES: [Activation; 4] = [
            Activation::Sigmoid,
            Activation::HardSigmoid,
            Activation::HardSigmoidKeras2,
            Activation::Tanh,
        ];
        const OUTPUTS: [Activation; 5] = [
            Activation::Tanh,
            Activation::Relu,
            Activation::Softsign,
            Activation::Linear,
            Activation::Gelu,
        ];
        let isas = isas();
        if isas.is_empty() {
            eprintln!("no AVX2/AVX-512 on this CPU: the packed kernels never run here");
            return;
        }
        let mut rng = StdRng::seed_from_u64(11);
        let mut worst = 0.0f32;
        for case in 0..60 {
            // every 10th case is big enough to split each step across threads
            let (batch, units) = if case % 10 == 9 {
                (rng.random_range(8..=13), rng.random_range(120..=160))
            } else {
                (rng.random_range(1..=14), rng.random_range(1..=40))
            };
            let steps = rng.random_range(1..=7);
            let input = rng.random_range(1..=37);
            let mut config = LstmConfig::new(units);
            config.activation = OUTPUTS[rng.random_range(0..OUTPUTS.len())];
            config.recurrent_activation = GATES[rng.random_range(0..GATES.len())];
            config.use_bias = rng.random_bool(0.7);
            config.go_backwards = rng.random_bool(0.3);
            config.zero_output_for_mask = rng.random_bool(0.5);
            let weights = LstmWeights::<f32>::random(&config, input, case).unwrap();
            let x = Array::from_shape_fn((batch, steps, input), |_| rng.random_range(-2.0..2.0));
            let mask = rng
                .random_bool(0.4)
                .then(|| Array::from_shape_fn((batch, steps), |_| rng.random_bool(0.7)));
            let start = LstmState {
                h: Array::from_shape_fn((batch, units), |_| rng.random_range(-1.0..1.0)),
                c: Array::from_shape_fn((batch, units), |_| rng.random_range(-1.0..1.0)),
            };
            let expected = crate::cpu::run(
                &config,
                &weights,
                x.view(),
                start.clone(),
                mask.as_ref().map(|m| m.view()),
            );
            for &isa in &isas {
                let packed = PackedWeights::with_isa(&weights, isa).unwrap();
                let mut scratch = vec![f32::NAN; 3];
                let got = run(
                    &packed,
                    StepRule::of(&config),
                    config.go_backwards,
                    x.view(),
                    &start,
                    mask.as_ref().map(|m| m.view()),
                    &mut scratch,
                )
                .unwrap();
                let pairs = [
                    (got.0.view().into_dyn(), expected.0.view().into_dyn()),
                    (got.1.view().into_dyn(), expected.1.view().into_dyn()),
                    (got.2.h.view().into_dyn(), expected.2.h.view().into_dyn()),
                    (got.2.c.view().into_dyn(), expected.2.c.view().into_dyn()),
                ];
                for (g, e) in pairs {
                    assert_eq!(g.shape(), e.shape());
                    for (a, b) in g.iter().zip(e.iter()) {
                        let err = (a - b).abs() / b.abs().max(1.0);
                        worst = worst.max(err);
                        assert!(
                            err <= 1e-5,
                            "case {case} {isa:?} B={batch} T={steps} I={input} H={units}: \
                             {a} vs {b}"
                        );
                    }
                }
            }
        }
        eprintln!("packed vs generic f32 path: worst relative error {worst:.2e}");
    }

    /// Forwards that split their steps between threads, run concurrently from inside the
    /// rayon pool and from plain threads, give exactly the result of a forward run alone
    /// (no deadlock when the helper threads are busy with other forwards).
    #[test]
    fn concurrent_forwards_match_a_lone_forward() {
        let Some(&isa) = isas().first() else {
            return;
        };
        let config = LstmConfig::new(130);
        let weights = LstmWeights::<f32>::random(&config, 9, 3).unwrap();
        let packed = PackedWeights::with_isa(&weights, isa).unwrap();
        let (batch, steps) = (7, 12);
        assert!(batch * 130 * packed.panels * COLS >= STEP_PARALLEL_MIN_MACS);
        let x = Array::from_shape_fn((batch, steps, 9), |(b, t, i)| {
            ((b * 31 + t * 7 + i) % 17) as f32 / 8.0 - 1.0
        });
        let start = LstmState {
            h: Array2::zeros((batch, 130)),
            c: Array2::zeros((batch, 130)),
        };
        let forward = || {
            let mut scratch = Vec::new();
            let rule = StepRule::of(&config);
            run(&packed, rule, false, x.view(), &start, None, &mut scratch).unwrap()
        };
        let alone = forward();
        let in_pool: Vec<_> = (0..8).into_par_iter().map(|_| forward()).collect();
        let threads: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(forward)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for got in in_pool.iter().chain(&threads) {
            assert_eq!(got, &alone);
        }
    }
}
