//! The floating-point element types the CPU path runs on (`f32`, `f64`).

use ndarray::LinalgScalar;
use std::fmt::{Debug, Display};

/// A float type the layers can be computed in: `f32` or `f64`.
///
/// The methods are the scalar functions the activations need; each maps to the
/// type's own implementation (or to `libm` where `std` has none).
///
/// ```
/// use lstm_wgpu::Element;
/// assert_eq!(<f32 as Element>::from_f64(0.5), 0.5f32);
/// assert_eq!(2.0f64.elem_max(3.0), 3.0);
/// ```
pub trait Element:
    LinalgScalar
    + PartialOrd
    + Debug
    + Display
    + Send
    + Sync
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + bytemuck::Pod
    + 'static
{
    /// The dtype name Keras uses (`float32`, `float64`).
    const DTYPE: &'static str;
    /// Whether this is `f32` (the GPU path's type).
    fn is_f32() -> bool {
        std::any::TypeId::of::<Self>() == std::any::TypeId::of::<f32>()
    }
    /// Converts from `f64` (rounding to nearest for `f32`).
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64` exactly.
    fn to_f64(self) -> f64;
    /// `e^self`.
    fn exp(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// `ln(1 + self)`, accurate near zero.
    fn ln_1p(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// `e^self - 1`, accurate near zero.
    fn exp_m1(self) -> Self;
    /// Error function.
    fn erf(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// Larger of two values (NaN-propagating like TensorFlow's `maximum` is not needed:
    /// a NaN in `self` is returned as is).
    fn elem_max(self, other: Self) -> Self {
        if self < other {
            other
        } else {
            self
        }
    }
    /// Smaller of two values (a NaN in `self` is returned as is).
    fn elem_min(self, other: Self) -> Self {
        if self > other {
            other
        } else {
            self
        }
    }
}

impl Element for f32 {
    const DTYPE: &'static str = "float32";
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        tanh_f32(self)
    }
    fn ln_1p(self) -> Self {
        f32::ln_1p(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn exp_m1(self) -> Self {
        f32::exp_m1(self)
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn abs(self) -> Self {
        f32::abs(self)
    }
}

/// `e^x` for f32 without a library call, so that loops over slices vectorize (Cephes `expf`:
/// range reduction by ln 2 and a degree-6 polynomial; within 2 ulp of the exact value).
/// Overflows to inf above 88.72 and underflows to 0 below -87.33, as `f32::exp` does.
// Cephes's published coefficients, kept as written.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without a library call.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.4, 88.73);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // 2^n as 2^(n/2) · 2^(n - n/2): both factors stay normal for every n in [-126, 128].
    // n itself sits in the low mantissa bits of `shifted` (an integer conversion with `as`
    // would not vectorize: it saturates and maps NaN to 0 lane by lane).
    let ni = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let n1 = ni >> 1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((ni - n1 + 127) as u32) << 23);
    let v = y * s1 * s2;
    let v = if x > 88.722_84 { f32::INFINITY } else { v };
    if x < -87.336_55 {
        0.0
    } else {
        v
    }
}

/// `tanh(x)` for f32 without a library call (Cephes `tanhf`: an odd polynomial below 0.625,
/// `1 - 2 / (e^{2|x|} + 1)` above; within 2 ulp of the exact value).
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_908_9e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328_2e-1)
            * z
            * x
            + x;
    // (a comparison, not f32::min, so that NaN stays NaN)
    let a20 = if a > 20.0 { 20.0 } else { a };
    let large = (1.0 - 2.0 / (exp_f32(2.0 * a20) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

impl Element for f64 {
    const DTYPE: &'static str = "float64";
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn ln_1p(self) -> Self {
        f64::ln_1p(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn exp_m1(self) -> Self {
        f64::exp_m1(self)
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn abs(self) -> Self {
        f64::abs(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Error in units of the exact value's f32 ulp.
    fn ulps(got: f32, exact: f64) -> f64 {
        let e = exact as f32;
        let ulp = (f32::from_bits(e.abs().to_bits() + 1) - e.abs()) as f64;
        (got as f64 - exact).abs() / ulp
    }

    #[test]
    fn exp_f32_within_2_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.7 {
            worst = worst.max(ulps(exp_f32(x), (x as f64).exp()));
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(88.7).is_finite());
    }

    #[test]
    fn tanh_f32_within_2_ulp() {
        let mut worst = 0.0f64;
        let mut x = -12.0f32;
        while x < 12.0 {
            worst = worst.max(ulps(tanh_f32(x), (x as f64).tanh()));
            x += 0.00731;
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert_eq!(tanh_f32(1e30), 1.0);
        assert_eq!(tanh_f32(-1e30), -1.0);
        assert_eq!(tanh_f32(0.0), 0.0);
        assert!(tanh_f32(f32::NAN).is_nan());
    }
}
