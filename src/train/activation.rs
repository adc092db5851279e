//! The derivatives of the activations, as TensorFlow's gradients of Keras's activation
//! functions give them (at the kinks: relu's gradient is 0 at 0, relu6's is 0 at 0 and at 6,
//! as `tf.nn.relu`'s and `tf.nn.relu6`'s are; `clip_by_value`'s passes at the bounds).
//! Also a Dense or `Activation` layer's activation on a tensor and its backward pass
//! (softmax over the last axis).

use crate::activation::Activation;
use crate::element::Element;
use crate::model::DenseActivation;
use ndarray::{ArrayD, Axis};

/// `d act(x) / dx` at the pre-activation `x`.
///
/// ```
/// use lstm_wgpu::train::derivative;
/// use lstm_wgpu::Activation;
/// assert_eq!(derivative(Activation::Tanh, 0.0f64), 1.0);
/// assert_eq!(derivative(Activation::Relu, 0.0f64), 0.0);
/// assert!((derivative(Activation::Sigmoid, 0.0f64) - 0.25).abs() < 1e-15);
/// ```
pub fn derivative<T: Element>(a: Activation, x: T) -> T {
    let (zero, one) = (T::zero(), T::one());
    let sigmoid = |v: T| one / (one + (-v).exp());
    match a {
        Activation::Tanh => {
            let t = x.tanh();
            one - t * t
        }
        Activation::Sigmoid => {
            let s = sigmoid(x);
            s * (one - s)
        }
        Activation::HardSigmoid => {
            // relu6(x + 3) / 6
            let u = x + T::from_f64(3.0);
            if u > zero && u < T::from_f64(6.0) {
                one / T::from_f64(6.0)
            } else {
                zero
            }
        }
        Activation::HardSigmoidKeras2 => {
            let u = T::from_f64(0.2) * x + T::from_f64(0.5);
            if u >= zero && u <= one {
                T::from_f64(0.2)
            } else {
                zero
            }
        }
        Activation::Relu => {
            if x > zero {
                one
            } else {
                zero
            }
        }
        Activation::Relu6 => {
            if x > zero && x < T::from_f64(6.0) {
                one
            } else {
                zero
            }
        }
        Activation::Linear => one,
        Activation::Elu => {
            if x > zero {
                one
            } else {
                x.exp()
            }
        }
        Activation::Selu => {
            let scale = T::from_f64(1.050_700_987_355_480_5);
            if x > zero {
                scale
            } else {
                scale * T::from_f64(1.673_263_242_354_377_3) * x.exp()
            }
        }
        Activation::Softplus => sigmoid(x),
        Activation::Softsign => {
            let d = one + x.abs();
            one / (d * d)
        }
        Activation::Swish => {
            let s = sigmoid(x);
            s + x * s * (one - s)
        }
        Activation::Gelu => {
            let phi = (-(x * x) * T::from_f64(0.5)).exp() * T::from_f64(0.398_942_280_401_432_7);
            T::from_f64(0.5) * (one + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
                + x * phi
        }
        Activation::Exponential => x.exp(),
    }
}

/// `d act(x) / dx` from the pre-activation `x` and the activation's value `y = act(x)`:
/// from `y` where that is exact and cheaper (sigmoid `y(1 - y)`, tanh `1 - y²`, relu,
/// linear, Keras 3's hard_sigmoid), else [`derivative`] at `x`.
#[inline]
pub(crate) fn derivative_at<T: Element>(a: Activation, x: T, y: T) -> T {
    let (zero, one) = (T::zero(), T::one());
    match a {
        Activation::Sigmoid => y * (one - y),
        Activation::Tanh => one - y * y,
        Activation::Linear => one,
        Activation::Relu => {
            if y > zero {
                one
            } else {
                zero
            }
        }
        Activation::HardSigmoid => {
            if y > zero && y < one {
                one / T::from_f64(6.0)
            } else {
                zero
            }
        }
        _ => derivative(a, x),
    }
}

/// [`derivative_at`] over slices: `out[k] = act'(x[k])` given `y[k] = act(x[k])`, the
/// activation matched once so the loop vectorizes (inlined, so that it takes the caller's
/// instruction set).
#[inline(always)]
pub(crate) fn derivative_slice<T: Element>(a: Activation, x: &[T], y: &[T], out: &mut [T]) {
    macro_rules! each {
        ($f:expr) => {
            for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
                *o = $f(x, y);
            }
        };
    }
    let one = T::one();
    match a {
        Activation::Sigmoid => each!(|_, y: T| y * (one - y)),
        Activation::Tanh => each!(|_, y: T| one - y * y),
        Activation::Linear => out.fill(one),
        _ => each!(|x, y| derivative_at(a, x, y)),
    }
}

/// A Dense activation on `z` (softmax over the last axis).
pub(crate) fn dense_activate<T: Element>(a: DenseActivation, z: &ArrayD<T>) -> ArrayD<T> {
    match a {
        DenseActivation::Elementwise(f) => z.mapv(|v| f.apply(v)),
        DenseActivation::Softmax => {
            let mut y = z.clone();
            for mut row in y.lanes_mut(Axis(z.ndim() - 1)) {
                let max = row
                    .iter()
                    .fold(T::from_f64(f64::NEG_INFINITY), |m, &v| m.elem_max(v));
                let mut sum = T::zero();
                row.mapv_inplace(|v| {
                    let e = (v - max).exp();
                    sum += e;
                    e
                });
                row.mapv_inplace(|v| v / sum);
            }
            y
        }
    }
}

/// dL/dz from dL/dy through a Dense activation at `z`.
pub(crate) fn dense_activation_backward<T: Element>(
    a: DenseActivation,
    z: &ArrayD<T>,
    d: &ArrayD<T>,
) -> ArrayD<T> {
    match a {
        DenseActivation::Elementwise(f) => {
            let mut out = d.clone();
            ndarray::Zip::from(&mut out)
                .and(z)
                .for_each(|o, &z| *o = *o * derivative(f, z));
            out
        }
        DenseActivation::Softmax => {
            let y = dense_activate(a, z);
            let mut out = d.clone();
            let ax = Axis(z.ndim() - 1);
            for (mut o, s) in out.lanes_mut(ax).into_iter().zip(y.lanes(ax)) {
                let dot = o
                    .iter()
                    .zip(s.iter())
                    .fold(T::zero(), |acc, (&g, &s)| acc + g * s);
                ndarray::Zip::from(&mut o)
                    .and(&s)
                    .for_each(|g, &s| *g = s * (*g - dot));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::derivative;
    use crate::activation::Activation;

    /// Every derivative against a central difference in f64, away from the kinks.
    #[test]
    fn derivatives_match_central_differences() {
        for a in Activation::ALL {
            for &x in &[-2.7f64, -1.1, -0.4, 0.3, 0.9, 1.7, 2.2, 4.5] {
                let eps = 1e-6;
                let want = (a.apply(x + eps) - a.apply(x - eps)) / (2.0 * eps);
                let got = derivative(a, x);
                assert!((got - want).abs() < 1e-7, "{a:?} at {x}: {got} vs {want}");
            }
        }
    }
}
