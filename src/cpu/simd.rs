//! The CPU's vector instruction sets, detected once: which one the kernels use ([`Isa`]), the
//! few vector operations they are written in ([`Lanes`], for AVX-512 and AVX2/FMA), and the
//! vector math of the fused cell update (exp, sigmoid, the in-register activations).

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
    /// The best set this CPU has, or None (then the generic path runs): the one detection
    /// that every CPU kernel follows, read once per process. `LSTM_WGPU_CPU_ISA=generic` or
    /// `avx2` caps the choice (to time or test the other paths on one machine); a set the CPU
    /// lacks is never chosen.
    pub(crate) fn detect() -> Option<Isa> {
        static DETECTED: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(Self::detect_uncached)
    }

    fn detect_uncached() -> Option<Isa> {
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

/// The few vector operations the kernels use, for one register width.
pub(super) trait Lanes: Copy {
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
pub(super) unsafe fn exp<V: Lanes>(x: V) -> V {
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

/// `e^(x - shift)` of every value of `xs` in place, returning their sum (partial sums per
/// lane, then the lanes and the scalar tail): a softmax row's one pass. In vector registers
/// where the CPU has them (the Cephes polynomial of [`exp`], within a few ulp of `f32::exp`;
/// exactly 0 below -87.3, where `f32::exp` gives subnormals under 1.2e-38; NaN stays NaN).
#[cfg(test)]
pub(crate) fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match Isa::detect() {
        // SAFETY: `detect` returns only a set this CPU has.
        Some(Isa::Avx512) => unsafe { exp_sum_avx512(xs, shift) },
        // SAFETY: as above (AVX2 and FMA).
        Some(Isa::Avx2) => unsafe { exp_sum_avx2(xs, shift) },
        None => exp_sum_scalar(xs, shift),
    }
    #[cfg(not(target_arch = "x86_64"))]
    exp_sum_scalar(xs, shift)
}

/// Softmax of `xs` in place, `e^(x - max) / sum`: the max, the exponentials with their sum
/// ([`exp_shifted_sum`]'s pass) and the scaling by `1 / sum`, each one pass in vector
/// registers where the CPU has them. A NaN anywhere makes the whole row NaN (its
/// exponential is NaN, so is the sum), as do `+inf` (`inf - inf`) and a row of `-inf`.
pub(crate) fn softmax_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match Isa::detect() {
        // SAFETY: `detect` returns only a set this CPU has.
        Some(Isa::Avx512) => unsafe { softmax_avx512(xs) },
        // SAFETY: as above (AVX2 and FMA).
        Some(Isa::Avx2) => unsafe { softmax_avx2(xs) },
        None => softmax_scalar(xs),
    }
    #[cfg(not(target_arch = "x86_64"))]
    softmax_scalar(xs)
}

fn softmax_scalar(xs: &mut [f32]) {
    let max = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    // (times the reciprocal: within an ulp of the division, and cheaper)
    let inv = 1.0 / exp_sum_scalar(xs, max);
    xs.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(xs: &mut [f32]) {
    softmax_lanes::<x86::Avx512>(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(xs: &mut [f32]) {
    softmax_lanes::<x86::Avx2>(xs)
}

#[inline(always)]
unsafe fn softmax_lanes<V: Lanes>(xs: &mut [f32]) {
    let whole = xs.len() / V::N * V::N;
    let p = xs.as_mut_ptr();
    // (four registers of maxima in flight; a NaN may be dropped here, its exponential
    // below is NaN all the same)
    let mut m = [V::splat(f32::NEG_INFINITY); 4];
    let mut i = 0;
    while i + 4 * V::N <= whole {
        for (k, m) in m.iter_mut().enumerate() {
            *m = V::max(V::load(p.add(i + k * V::N)), *m);
        }
        i += 4 * V::N;
    }
    while i < whole {
        m[0] = V::max(V::load(p.add(i)), m[0]);
        i += V::N;
    }
    let mut lanes = [0f32; 16];
    V::max(V::max(m[0], m[1]), V::max(m[2], m[3])).store(lanes.as_mut_ptr());
    let max = lanes[..V::N]
        .iter()
        .chain(&xs[whole..])
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let inv = V::splat(1.0 / exp_sum_lanes::<V>(xs, max));
    let p = xs.as_mut_ptr();
    for i in (0..whole).step_by(V::N) {
        V::mul(V::load(p.add(i)), inv).store(p.add(i));
    }
    inv.store(lanes.as_mut_ptr());
    for x in &mut xs[whole..] {
        *x *= lanes[0];
    }
}

fn exp_sum_scalar(xs: &mut [f32], shift: f32) -> f32 {
    let mut sum = 0.0;
    for x in xs.iter_mut() {
        *x = (*x - shift).exp();
        sum += *x;
    }
    sum
}

#[cfg(test)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_sum_avx512(xs: &mut [f32], shift: f32) -> f32 {
    exp_sum_lanes::<x86::Avx512>(xs, shift)
}

#[cfg(test)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sum_avx2(xs: &mut [f32], shift: f32) -> f32 {
    exp_sum_lanes::<x86::Avx2>(xs, shift)
}

#[inline(always)]
unsafe fn exp_sum_lanes<V: Lanes>(xs: &mut [f32], shift: f32) -> f32 {
    let whole = xs.len() / V::N * V::N;
    let p = xs.as_mut_ptr();
    let minus = V::splat(-shift);
    let mut acc = V::splat(0.0);
    for i in (0..whole).step_by(V::N) {
        // SAFETY: i + N <= len.
        let x = V::add(V::load(p.add(i)), minus);
        let e = V::where_below(x, V::splat(-87.3), V::splat(0.0), exp(x));
        e.store(p.add(i));
        acc = V::add(acc, e);
    }
    let mut lanes = [0f32; 16];
    acc.store(lanes.as_mut_ptr());
    let mut sum: f32 = lanes[..V::N].iter().sum();
    for x in &mut xs[whole..] {
        *x = (*x - shift).exp();
        sum += *x;
    }
    sum
}

#[cfg(test)]
mod exp_tests {
    /// Within 2e-7 (relative) of f32::exp over [-87.3, 88], 0 below; NaN stays NaN, -inf
    /// gives 0; over whole registers and the scalar tail.
    #[test]
    fn exp_shifted_sum_matches_f32_exp() {
        let mut xs: Vec<f32> = (0..=3563).map(|k| -90.0 + k as f32 * 0.05).collect();
        let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        super::exp_shifted_sum(&mut xs, 0.0);
        for (k, (g, w)) in xs.iter().zip(&want).enumerate() {
            let x = -90.0 + k as f32 * 0.05;
            if x < -87.3 {
                assert!(*g == 0.0 && *w < 1.3e-38, "{x}: {g} {w}");
            } else {
                assert!((g - w).abs() <= 2e-7 * w, "{x}: {g} vs {w}");
            }
        }
        let mut odd = [
            f32::NAN,
            f32::NEG_INFINITY,
            0.0,
            1.0,
            f32::NAN,
            -1.0,
            2.0,
            3.0,
            0.5,
            f32::NAN,
            4.0,
            -3.0,
            5.0,
            6.0,
            7.0,
            8.0,
            -0.0,
        ];
        let mut shifted = odd;
        super::exp_shifted_sum(&mut odd, 0.0);
        assert!(odd[0].is_nan() && odd[4].is_nan() && odd[9].is_nan());
        // the shifted form: e^(x - 1) and its sum (NaN in, NaN sum)
        let sum = super::exp_shifted_sum(&mut shifted, 1.0);
        assert!(sum.is_nan() && shifted[0].is_nan());
        assert!((shifted[3] - 1.0).abs() < 1e-7 && (shifted[6] - 1f32.exp()).abs() < 1e-6);
        let mut row: Vec<f32> = (0..37).map(|k| k as f32 * 0.1).collect();
        let want: f32 = row.iter().map(|x| (x - 3.0f32).exp()).sum();
        let got = super::exp_shifted_sum(&mut row, 3.0);
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        assert_eq!(odd[1], 0.0);
        assert_eq!(odd[2], 1.0);
    }

    /// Softmax rows of many lengths (whole register groups, single registers, the tail)
    /// against f64; NaN or +inf anywhere, or a row of -inf, gives a NaN row.
    #[test]
    fn softmax_matches_f64_and_propagates_nan() {
        for len in [1usize, 3, 8, 31, 32, 33, 64, 100, 513] {
            let mut row: Vec<f32> = (0..len)
                .map(|k| ((k * 37 % 101) as f32 - 50.0) * 0.3)
                .collect();
            let max = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
            let e: Vec<f64> = row.iter().map(|&x| (f64::from(x) - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            super::softmax_in_place(&mut row);
            for (k, (&g, w)) in row.iter().zip(&e).enumerate() {
                assert!(
                    (f64::from(g) - w / sum).abs() < 1e-6,
                    "{len}/{k}: {g} vs {}",
                    w / sum
                );
            }
            for (bad, at) in [(f32::NAN, len / 2), (f32::INFINITY, len - 1), (f32::NAN, 0)] {
                let mut row = vec![0.5f32; len];
                row[at] = bad;
                super::softmax_in_place(&mut row);
                assert!(
                    row.iter().all(|x| x.is_nan()),
                    "{len}: {bad} at {at}: {row:?}"
                );
            }
            let mut row = vec![f32::NEG_INFINITY; len];
            super::softmax_in_place(&mut row);
            assert!(row.iter().all(|x| x.is_nan()), "{len}: -inf row");
        }
    }
}

/// Vector logistic sigmoid, `1 / (1 + e^-x)`: exactly 0 where `e^-x` overflows f32 (as the
/// generic path's and Keras's, so that 0 · inf gives NaN there too), NaN for NaN.
#[inline(always)]
pub(super) unsafe fn sigmoid<V: Lanes>(x: V) -> V {
    let one = V::splat(1.0);
    let s = V::div(one, V::add(one, exp(V::mul(x, V::splat(-1.0)))));
    V::where_below(x, V::splat(-88.722_84), V::splat(0.0), s)
}

/// The activations the fused step epilogue computes in registers; the others go through
/// `cell_update_impl`.
pub(super) fn in_registers(a: crate::Activation) -> bool {
    use crate::Activation::*;
    matches!(
        a,
        Sigmoid | Tanh | HardSigmoid | HardSigmoidKeras2 | Relu | Linear
    )
}

/// One of the [`in_registers`] activations on a vector. `tanh` is `2·sigmoid(2x) - 1`
/// (absolute error below 3e-7).
#[inline(always)]
pub(super) unsafe fn activate<V: Lanes>(a: crate::Activation, x: V) -> V {
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
pub(super) mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(in crate::cpu) struct Avx512(__m512);
    #[derive(Clone, Copy)]
    pub(in crate::cpu) struct Avx2(__m256);

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
