//! Activation functions, as Keras 3 defines them.

use crate::element::Element;
use crate::error::{LstmError, Result};
use std::fmt;

/// An activation function, named as in Keras.
///
/// `HardSigmoid` is Keras 3's `relu6(x + 3) / 6`; Keras 2's `clip(0.2x + 0.5, 0, 1)` is the
/// separate variant [`Activation::HardSigmoidKeras2`] (config name `hard_sigmoid_keras2`), for
/// models trained under Keras 2 whose configs say `hard_sigmoid`.
///
/// ```
/// use lstm_wgpu::Activation;
/// let a = Activation::from_name("hard_sigmoid").unwrap();
/// assert_eq!(a.apply(1.0f64), 4.0 / 6.0);
/// assert_eq!(Activation::HardSigmoidKeras2.apply(1.0f64), 0.7);
/// assert!(Activation::from_name("nope").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// Keras 3: `relu6(x + 3) / 6`.
    HardSigmoid,
    /// Keras 2: `clip(0.2 x + 0.5, 0, 1)`.
    HardSigmoidKeras2,
    /// `max(x, 0)`.
    Relu,
    /// `x`.
    Linear,
    /// `x` if `x > 0`, else `e^x - 1`.
    Elu,
    /// `scale * elu_alpha(x)` with Keras's constants.
    Selu,
    /// `ln(1 + e^x)`.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `x * sigmoid(x)` (also called silu).
    Swish,
    /// `0.5 x (1 + erf(x / sqrt 2))` (Keras 3's default, exact form).
    Gelu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `e^x`.
    Exponential,
}

const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

impl Activation {
    /// Every activation, in the order of [`Activation::id`].
    pub const ALL: [Activation; 14] = [
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::HardSigmoid,
        Activation::HardSigmoidKeras2,
        Activation::Relu,
        Activation::Linear,
        Activation::Elu,
        Activation::Selu,
        Activation::Softplus,
        Activation::Softsign,
        Activation::Swish,
        Activation::Gelu,
        Activation::Relu6,
        Activation::Exponential,
    ];

    /// Parses a Keras activation name (`"tanh"`, `"silu"`, ...).
    ///
    /// ```
    /// use lstm_wgpu::Activation;
    /// assert_eq!(Activation::from_name("silu").unwrap(), Activation::Swish);
    /// ```
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "hard_sigmoid" => Activation::HardSigmoid,
            "hard_sigmoid_keras2" => Activation::HardSigmoidKeras2,
            "relu" => Activation::Relu,
            "linear" => Activation::Linear,
            "elu" => Activation::Elu,
            "selu" => Activation::Selu,
            "softplus" => Activation::Softplus,
            "softsign" => Activation::Softsign,
            "swish" | "silu" => Activation::Swish,
            "gelu" => Activation::Gelu,
            "relu6" => Activation::Relu6,
            "exponential" => Activation::Exponential,
            other => return Err(LstmError::unsupported("activation", other)),
        })
    }

    /// The Keras name of this activation.
    ///
    /// ```
    /// assert_eq!(lstm_wgpu::Activation::Swish.name(), "swish");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::HardSigmoid => "hard_sigmoid",
            Activation::HardSigmoidKeras2 => "hard_sigmoid_keras2",
            Activation::Relu => "relu",
            Activation::Linear => "linear",
            Activation::Elu => "elu",
            Activation::Selu => "selu",
            Activation::Softplus => "softplus",
            Activation::Softsign => "softsign",
            Activation::Swish => "swish",
            Activation::Gelu => "gelu",
            Activation::Relu6 => "relu6",
            Activation::Exponential => "exponential",
        }
    }

    /// A stable small integer for this activation; the GPU kernels select the activation with
    /// it (as a pipeline-overridable constant), matching `act()` in `shaders/common.wgsl`.
    ///
    /// ```
    /// use lstm_wgpu::Activation;
    /// assert!(Activation::ALL.iter().enumerate().all(|(i, a)| a.id() as usize == i));
    /// ```
    pub fn id(self) -> u32 {
        Activation::ALL
            .iter()
            .position(|a| *a == self)
            .expect("ALL lists every variant") as u32
    }

    /// Applies the activation to one value.
    ///
    /// ```
    /// use lstm_wgpu::Activation;
    /// assert_eq!(Activation::Relu6.apply(7.0f32), 6.0);
    /// ```
    #[inline(always)]
    pub fn apply<T: Element>(self, x: T) -> T {
        let zero = T::zero();
        let one = T::one();
        match self {
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => one / (one + (-x).exp()),
            Activation::HardSigmoid => {
                // relu6(x + 3) / 6
                let three = T::from_f64(3.0);
                let six = T::from_f64(6.0);
                (x + three).elem_max(zero).elem_min(six) / six
            }
            Activation::HardSigmoidKeras2 => (T::from_f64(0.2) * x + T::from_f64(0.5))
                .elem_max(zero)
                .elem_min(one),
            Activation::Relu => x.elem_max(zero),
            Activation::Linear => x,
            Activation::Elu => {
                if x > zero {
                    x
                } else {
                    x.exp_m1()
                }
            }
            Activation::Selu => {
                let scale = T::from_f64(SELU_SCALE);
                if x > zero {
                    scale * x
                } else {
                    scale * T::from_f64(SELU_ALPHA) * x.exp_m1()
                }
            }
            Activation::Softplus => x.elem_max(zero) + (-x.abs()).exp().ln_1p(),
            Activation::Softsign => x / (one + x.abs()),
            Activation::Swish => x / (one + (-x).exp()),
            Activation::Gelu => {
                T::from_f64(0.5)
                    * x
                    * (one + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
            }
            Activation::Relu6 => x.elem_max(zero).elem_min(T::from_f64(6.0)),
            Activation::Exponential => x.exp(),
        }
    }
}

impl Activation {
    /// Applies the activation to every element of `xs` in place. The choice of function is
    /// made once, outside the loop, so the loop vectorizes.
    ///
    /// ```
    /// use lstm_wgpu::Activation;
    /// let mut v = [-1.0f32, 0.0, 2.0];
    /// Activation::Relu.apply_slice(&mut v);
    /// assert_eq!(v, [0.0, 0.0, 2.0]);
    /// ```
    #[inline(always)]
    pub fn apply_slice<T: Element>(self, xs: &mut [T]) {
        macro_rules! each {
            ($a:expr) => {
                for x in xs.iter_mut() {
                    *x = $a.apply(*x);
                }
            };
        }
        match self {
            Activation::Tanh => each!(Activation::Tanh),
            Activation::Sigmoid => each!(Activation::Sigmoid),
            Activation::HardSigmoid => each!(Activation::HardSigmoid),
            Activation::HardSigmoidKeras2 => each!(Activation::HardSigmoidKeras2),
            Activation::Relu => each!(Activation::Relu),
            Activation::Linear => {}
            Activation::Elu => each!(Activation::Elu),
            Activation::Selu => each!(Activation::Selu),
            Activation::Softplus => each!(Activation::Softplus),
            Activation::Softsign => each!(Activation::Softsign),
            Activation::Swish => each!(Activation::Swish),
            Activation::Gelu => each!(Activation::Gelu),
            Activation::Relu6 => each!(Activation::Relu6),
            Activation::Exponential => each!(Activation::Exponential),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Activation::ALL {
            assert_eq!(Activation::from_name(a.name()).unwrap(), a);
        }
    }

    #[test]
    fn hard_sigmoid_variants_differ() {
        // Keras 3 saturates at |x| >= 3, Keras 2 at |x| >= 2.5.
        assert!((Activation::HardSigmoid.apply(2.5f64) - (2.5 / 6.0 + 0.5)).abs() < 1e-15);
        assert_eq!(Activation::HardSigmoidKeras2.apply(2.5f64), 1.0);
        assert_eq!(Activation::HardSigmoid.apply(-3.0f64), 0.0);
        assert_eq!(Activation::HardSigmoid.apply(0.0f64), 0.5);
        assert_eq!(Activation::HardSigmoidKeras2.apply(0.0f64), 0.5);
    }

    #[test]
    fn reference_values() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(
            Activation::Gelu.apply(1.0f64),
            0.841_344_746_068_542_9
        ));
        assert!(close(
            Activation::Selu.apply(-1.0f64),
            -1.111_330_737_812_562_6
        ));
        assert!(close(
            Activation::Softplus.apply(0.0f64),
            std::f64::consts::LN_2
        ));
        assert!(close(Activation::Softplus.apply(50.0f64), 50.0));
        assert!(close(Activation::Elu.apply(-1.0f64), (-1.0f64).exp() - 1.0));
        assert!(close(
            Activation::Swish.apply(1.0f64),
            1.0 / (1.0 + (-1.0f64).exp())
        ));
        assert!(close(Activation::Softsign.apply(-3.0f64), -0.75));
        assert!(close(
            Activation::Exponential.apply(1.0f64),
            std::f64::consts::E
        ));
        assert_eq!(Activation::Sigmoid.apply(-1000.0f32), 0.0);
        assert_eq!(Activation::Sigmoid.apply(1000.0f32), 1.0);
    }

    #[test]
    fn nan_propagates() {
        for a in Activation::ALL {
            assert!(a.apply(f32::NAN).is_nan(), "{a} should propagate NaN");
        }
    }
}
