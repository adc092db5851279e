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

/// A standard normal draw (Box-Muller over two uniform draws; `1 - u` keeps the logarithm's
/// argument in (0, 1]).
fn normal(rng: &mut SplitMix) -> f64 {
    let u1: f64 = 1.0 - rng.next_f64();
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
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
            return Ok(OpForward {
                y: x.to_owned(),
                mask: mask.cloned(),
                cache: Box::new(None::<ArrayD<T>>),
            });
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
        let noise = cache_of::<Option<ArrayD<T>>>(cache, name)?;
        let dx = match noise {
            Some(n) => &d * n,
            None => d,
        };
        Ok((dx, Vec::new()))
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
            return Ok(OpForward {
                y: x.to_owned(),
                mask: mask.cloned(),
                cache: Box::new(None::<ArrayD<T>>),
            });
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
        let scale = cache_of::<Option<ArrayD<T>>>(cache, name)?;
        Ok((
            match scale {
                Some(s) => &d * s,
                None => d,
            },
            Vec::new(),
        ))
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}
