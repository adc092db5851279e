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
    + 'static
{
    /// The dtype name Keras uses (`float32`, `float64`).
    const DTYPE: &'static str;
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
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    fn ln_1p(self) -> Self {
        f32::ln_1p(self)
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

impl Element for f64 {
    const DTYPE: &'static str = "float64";
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn ln_1p(self) -> Self {
        f64::ln_1p(self)
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
