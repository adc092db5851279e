//! `BatchNormalization` over the last axis (channels_last) in both modes, as Keras 3
//! computes it (`keras/src/layers/normalization/batch_normalization.py`): at inference the
//! moving statistics; in training mode the batch's, over every axis but the last (under a
//! `[B, T]` mask the unmasked positions only: `sum(m·x) / (sum(m) + 1e-7)`, and the variance
//! likewise), with the moving statistics then moved towards them
//! (`moving · momentum + batch · (1 - momentum)`, written by `fit` after its step). Keeps the
//! mask.

use super::scale_shift::{vector, ScaleShift};
use super::{cache_of, OpCache, OpForward, TrainOp};
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array1, Array2, ArrayD, ArrayViewD, ArrayViewMutD};
use serde_json::Value;

#[derive(Debug, Clone)]
pub(super) struct BatchNorm<T> {
    axis: i64,
    epsilon: f64,
    momentum: f64,
    ss: ScaleShift<T>,
    moving_mean: Array1<T>,
    moving_variance: Array1<T>,
}

impl<T: Element> BatchNorm<T> {
    /// From the layer's config and weights (gamma with `scale`, beta with `center`, then the
    /// moving mean and variance).
    pub(super) fn new(cfg: &Value, name: &str, w: Vec<ArrayD<T>>) -> Result<Self> {
        if cfg.get("renorm").and_then(Value::as_bool) == Some(true) {
            return Err(LstmError::unsupported(
                "renorm",
                format!("true on layer {name} in training"),
            ));
        }
        // (-1, or a positive index that must name the last axis of the input: Keras 2
        // writes `[2]` for a 3-D input)
        let axis = crate::graph::norm_axis(cfg).ok_or_else(|| {
            LstmError::unsupported(
                "axis",
                format!(
                    "{:?} of layer {name} in training (one axis, the last)",
                    cfg.get("axis")
                ),
            )
        })?;
        let mut it = w.into_iter();
        let ss = ScaleShift::take(cfg, name, &mut it)?;
        let moving_mean = vector(&mut it, name, "moving_mean")?;
        let moving_variance = vector(&mut it, name, "moving_variance")?;
        let width = moving_mean.len();
        ss.check_width(name, width)?;
        if moving_variance.len() != width {
            return Err(LstmError::shape(
                format!("{name}/moving_variance"),
                &[width],
                &[moving_variance.len()],
            ));
        }
        Ok(BatchNorm {
            axis,
            epsilon: cfg.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3),
            momentum: cfg.get("momentum").and_then(Value::as_f64).unwrap_or(0.99),
            ss,
            moving_mean,
            moving_variance,
        })
    }
}

/// The input as rows of the last axis, each row's weight in the batch statistics (None: the
/// moving statistics were used), the statistics used and the rows' shape.
struct BnCache<T> {
    x: Array2<T>,
    weights: Option<Vec<T>>,
    /// Whether a mask weighted the rows (its divisor then has Keras's `+ 1e-7`).
    masked: bool,
    mean: Array1<T>,
    var: Array1<T>,
    shape: Vec<usize>,
}

impl<T: Element> TrainOp<T> for BatchNorm<T> {
    fn class(&self) -> &'static str {
        "BatchNormalization"
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        mask: Option<&Array2<bool>>,
        training: Option<u64>,
    ) -> Result<OpForward<T>> {
        crate::graph::last_axis(name, self.axis, x.ndim())?;
        let shape = x.shape().to_vec();
        let width = self.moving_mean.len();
        if shape.len() < 2 || shape[shape.len() - 1] != width {
            let mut want = shape.clone();
            if let Some(l) = want.last_mut() {
                *l = width;
            }
            return Err(LstmError::shape(
                format!("input of layer {name}"),
                &want,
                &shape,
            ));
        }
        let rows = x.len() / width.max(1);
        let x2 = x
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((rows, width))
            .expect("rows of the last axis");
        let (weights, mean, var) = if training.is_some() {
            // each row's weight: 1, or its step's mask value (a [B, T] mask on [B, T, C])
            let weights: Vec<T> = match mask {
                Some(m) if shape.len() == 3 && m.dim() == (shape[0], shape[1]) => m
                    .iter()
                    .map(|&p| if p { T::one() } else { T::zero() })
                    .collect(),
                Some(m) => {
                    return Err(LstmError::shape(
                        format!("mask of layer {name}"),
                        &shape[..shape.len() - 1],
                        m.shape(),
                    ))
                }
                None => vec![T::one(); rows],
            };
            // (Keras's masked moments divide by sum(mask) + epsilon; its unmasked ones by N)
            let total = weights.iter().fold(T::zero(), |a, &v| a + v)
                + if mask.is_some() {
                    T::from_f64(1e-7)
                } else {
                    T::zero()
                };
            // (the same divisor as `BnCache::n_total`)
            let mut mean = Array1::<T>::zeros(width);
            for (row, &wt) in x2.rows().into_iter().zip(&weights) {
                mean.zip_mut_with(&row, |m, &v| *m += wt * v);
            }
            mean.mapv_inplace(|v| v / total);
            let mut var = Array1::<T>::zeros(width);
            for (row, &wt) in x2.rows().into_iter().zip(&weights) {
                for j in 0..width {
                    let d = row[j] - mean[j];
                    var[j] += wt * d * d;
                }
            }
            var.mapv_inplace(|v| v / total);
            (Some(weights), mean, var)
        } else {
            (None, self.moving_mean.clone(), self.moving_variance.clone())
        };
        let eps = T::from_f64(self.epsilon);
        let mut y = Array2::<T>::zeros((rows, width));
        for j in 0..width {
            // tf.nn.batch_normalization: inv = rsqrt(var + eps) · gamma; x · inv + (beta -
            // mean · inv)
            let inv = T::one() / T::from_f64((var[j] + eps).to_f64().sqrt()) * self.ss.gamma(j);
            let shift = self.ss.beta(j) - mean[j] * inv;
            for r in 0..rows {
                y[[r, j]] = x2[[r, j]] * inv + shift;
            }
        }
        Ok(OpForward {
            y: y.into_shape_with_order(ndarray::IxDyn(&shape))
                .expect("the input's shape"),
            mask: mask.cloned(),
            cache: Box::new(BnCache {
                x: x2,
                weights,
                masked: mask.is_some(),
                mean,
                var,
                shape,
            }),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let c = cache_of::<BnCache<T>>(cache, name)?;
        let (rows, width) = c.x.dim();
        let d2 = d
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((rows, width))
            .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
        let eps = T::from_f64(self.epsilon);
        let two = T::from_f64(2.0);
        let mut dx = Array2::<T>::zeros((rows, width));
        let mut dgamma = Array1::<T>::zeros(width);
        let mut dbeta = Array1::<T>::zeros(width);
        for j in 0..width {
            let s = T::one() / T::from_f64((c.var[j] + eps).to_f64().sqrt());
            let g = self.ss.gamma(j);
            let (mut sum_d, mut sum_dxc) = (T::zero(), T::zero());
            for r in 0..rows {
                let xc = c.x[[r, j]] - c.mean[j];
                sum_d += d2[[r, j]];
                sum_dxc += d2[[r, j]] * xc;
                dgamma[j] += d2[[r, j]] * xc * s;
            }
            dbeta[j] = sum_d;
            match &c.weights {
                // the moving statistics are constants
                None => {
                    for r in 0..rows {
                        dx[[r, j]] = d2[[r, j]] * g * s;
                    }
                }
                // y = g·(x - mean)·s with mean = Σ m·x / N', var = Σ m·(x - mean)² / N',
                // s = (var + ε)^(-1/2): the direct path, and those through var and mean
                Some(m) => {
                    let n = c.n_total();
                    let dvar = -(T::from_f64(0.5)) * s * s * s * g * sum_dxc;
                    let mut sum_mxc = T::zero();
                    for (r, &wt) in m.iter().enumerate() {
                        sum_mxc += wt * (c.x[[r, j]] - c.mean[j]);
                    }
                    let dmean = -(g * s * sum_d) - dvar * two * sum_mxc / n;
                    for (r, &wt) in m.iter().enumerate() {
                        let xc = c.x[[r, j]] - c.mean[j];
                        dx[[r, j]] = d2[[r, j]] * g * s + dvar * two * wt * xc / n + dmean * wt / n;
                    }
                }
            }
        }
        let grads = self.ss.grads(dgamma, dbeta);
        Ok((
            dx.into_shape_with_order(ndarray::IxDyn(&c.shape))
                .expect("the input's shape"),
            grads,
        ))
    }

    fn weights(&self) -> Vec<ArrayD<T>> {
        self.ss.weights()
    }

    fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        self.ss.weights_mut()
    }

    fn state(&self) -> Vec<ArrayD<T>> {
        vec![
            self.moving_mean.clone().into_dyn(),
            self.moving_variance.clone().into_dyn(),
        ]
    }

    fn state_update(&self, state: &[ArrayD<T>], cache: &OpCache) -> Option<Vec<ArrayD<T>>> {
        let c = cache.downcast_ref::<BnCache<T>>()?;
        c.weights.as_ref()?;
        let [mean, var] = state else { return None };
        let (mo, rest) = (T::from_f64(self.momentum), T::from_f64(1.0 - self.momentum));
        let step = |moving: &ArrayD<T>, batch: &Array1<T>| {
            let mut out = moving.clone();
            out.zip_mut_with(&batch.view().into_dyn(), |m, &b| *m = *m * mo + b * rest);
            out
        };
        Some(vec![step(mean, &c.mean), step(var, &c.var)])
    }

    fn set_state(&mut self, state: &[ArrayD<T>]) -> Result<()> {
        let [mean, var] = state else {
            return Err(LstmError::invalid(
                "BatchNormalization state",
                format!("expected 2 arrays, got {}", state.len()),
            ));
        };
        for (a, to) in [
            (mean, &mut self.moving_mean),
            (var, &mut self.moving_variance),
        ] {
            if a.shape() != to.shape() {
                return Err(LstmError::shape(
                    "BatchNormalization state",
                    to.shape(),
                    a.shape(),
                ));
            }
            to.assign(
                &a.view()
                    .into_dimensionality::<ndarray::Ix1>()
                    .expect("checked"),
            );
        }
        Ok(())
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}

impl<T: Element> BnCache<T> {
    /// The divisor of the batch statistics (`sum(mask) + 1e-7` under a mask, the row count
    /// otherwise).
    fn n_total(&self) -> T {
        let w = self.weights.as_ref().expect("training mode");
        let sum = w.iter().fold(T::zero(), |a, &v| a + v);
        sum + if self.masked {
            T::from_f64(1e-7)
        } else {
            T::zero()
        }
    }
}
