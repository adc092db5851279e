//! `GaussianNoise` and `GaussianDropout` in training mode (the identity at inference), as
//! Keras 3 computes them (`keras/src/layers/regularization`): `x + N(0, stddev)` and
//! `x · N(1, sqrt(rate / (1 - rate)))`, one draw per value, from this crate's seeded
//! generator (normal draws by Box-Muller from SplitMix64: Keras's semantics, other draws, as
//! for Dropout). Both keep the mask.

use super::super::dropout::SplitMix;
use super::{cache_of, OpCache, OpForward, TrainOp};
use crate::element::Element;
use crate::error::Result;
use ndarray::{Array2, ArrayD, ArrayViewD};

/// `GaussianNoise(stddev)` (`multiply: false`) or `GaussianDropout(rate)` (`multiply: true`,
/// `stddev = sqrt(rate / (1 - rate))`, mean 1).
#[derive(Debug, Clone)]
pub(super) struct GaussianNoise {
    pub(super) stddev: f64,
    pub(super) multiply: bool,
    pub(super) class: &'static str,
}

/// A standard normal draw from the generator (`crate::weights::standard_normal`).
fn normal(rng: &mut SplitMix) -> f64 {
    crate::weights::standard_normal(|| rng.next_f64())
}

/// The identity (inference, or nothing to draw): the input, its mask, no scale.
fn unchanged<T: Element>(x: ArrayViewD<'_, T>, mask: Option<&Array2<bool>>) -> OpForward<T> {
    OpForward {
        y: x.to_owned(),
        mask: mask.cloned(),
        cache: Box::new(None::<ArrayD<T>>),
    }
}

/// The backward pass of an op whose cache is the input's scale (`dy/dx`, None for 1).
fn scaled<T: Element>(
    name: &str,
    cache: &OpCache,
    d: ArrayD<T>,
) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
    let dx = match cache_of::<Option<ArrayD<T>>>(cache, name)? {
        Some(s) => &d * s,
        None => d,
    };
    Ok((dx, Vec::new()))
}

impl<T: Element> TrainOp<T> for GaussianNoise {
    fn class(&self) -> &'static str {
        self.class
    }

    fn forward(
        &self,
        _: &str,
        x: ArrayViewD<'_, T>,
        mask: Option<&Array2<bool>>,
        training: Option<u64>,
    ) -> Result<OpForward<T>> {
        let Some(seed) = training.filter(|_| self.stddev > 0.0) else {
            return Ok(unchanged(x, mask));
        };
        let mut rng = SplitMix(seed);
        let mean = if self.multiply { 1.0 } else { 0.0 };
        let noise = ArrayD::from_shape_fn(x.raw_dim(), |_| {
            T::from_f64(mean + self.stddev * normal(&mut rng))
        });
        let y = if self.multiply {
            &x * &noise
        } else {
            &x + &noise
        };
        Ok(OpForward {
            y,
            mask: mask.cloned(),
            cache: Box::new(self.multiply.then_some(noise)),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        // (added noise passes the cotangent through; multiplied noise scales it)
        scaled(name, cache, d)
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}

/// `AlphaDropout(rate)` in training mode (the identity at inference), as Keras 3 computes
/// it: with `kept` drawn as a Dropout's (each value kept with probability `1 - rate`),
/// `a · (x · kept + α' · (1 - kept)) + b` for SELU's `α' = -1.6732632423543772 ·
/// 1.0507009873554805`, `a = ((1 - rate)(1 + rate·α'²))^(-1/2)`, `b = -a·α'·rate`; the
/// cotangent `a · kept`. Keeps the mask.
#[derive(Debug, Clone)]
pub(super) struct AlphaDropout {
    pub(super) rate: f64,
}

impl<T: Element> TrainOp<T> for AlphaDropout {
    fn class(&self) -> &'static str {
        "AlphaDropout"
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        mask: Option<&Array2<bool>>,
        training: Option<u64>,
    ) -> Result<OpForward<T>> {
        let Some(seed) = training.filter(|_| self.rate > 0.0) else {
            return Ok(unchanged(x, mask));
        };
        let mut rng = SplitMix(seed);
        let scaled: ArrayD<T> =
            super::super::dropout::dropout_mask(name, self.rate, None, x.shape(), &mut rng)?;
        let alpha_p = -1.673_263_242_354_377_3 * 1.050_700_987_355_480_5;
        let a = ((1.0 - self.rate) * (1.0 + self.rate * alpha_p * alpha_p)).powf(-0.5);
        let b = -a * alpha_p * self.rate;
        let (ta, tb, tap) = (T::from_f64(a), T::from_f64(b), T::from_f64(alpha_p));
        let kept = scaled.mapv(|v| if v == T::zero() { T::zero() } else { T::one() });
        let mut y = x.to_owned();
        ndarray::Zip::from(&mut y)
            .and(&kept)
            .for_each(|v, &k| *v = ta * (*v * k + tap * (T::one() - k)) + tb);
        Ok(OpForward {
            y,
            mask: mask.cloned(),
            cache: Box::new(Some(kept.mapv(|k| k * ta))),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        scaled(name, cache, d)
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}
