//! `LayerNormalization` over the last axis and its backward pass.

use super::scale_shift::ScaleShift;
use super::{cache_of, OpCache, OpForward, TrainOp};
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array2, ArrayD, ArrayViewD, ArrayViewMutD, Axis};
use serde_json::Value;

/// `LayerNormalization(axis=-1, epsilon, center, scale)` as Keras computes it
/// (`keras/src/ops/nn.py` `_layer_normalization`): per row of the last axis, `mean` and the
/// biased `variance`, `inv = rsqrt(variance + epsilon) · gamma`, `y = x · inv + (beta -
/// mean · inv)`. Keeps the mask. Backward, with `x̂ = (x - mean) · rsqrt(variance + ε)`:
/// `dgamma = Σ dy · x̂`, `dbeta = Σ dy`, `dx = rsqrt(variance + ε) · (g - mean(g) - x̂ ·
/// mean(g · x̂))` for `g = dy · gamma`.
#[derive(Debug, Clone)]
pub(super) struct LayerNorm<T> {
    epsilon: f64,
    axis: i64,
    ss: ScaleShift<T>,
}

impl<T: Element> LayerNorm<T> {
    /// From the layer's config and weights (gamma with `scale`, then beta with `center`).
    pub(super) fn new(cfg: &Value, name: &str, w: Vec<ArrayD<T>>) -> Result<Self> {
        if cfg.get("rms_scaling").and_then(Value::as_bool) == Some(true) {
            return Err(LstmError::unsupported(
                "rms_scaling",
                format!("true on layer {name} in training"),
            ));
        }
        let axis = crate::graph::norm_axis(cfg).ok_or_else(|| {
            LstmError::unsupported(
                "axis",
                format!("{:?} of layer {name} (one axis, the last)", cfg.get("axis")),
            )
        })?;
        let ss = ScaleShift::take(cfg, name, &mut w.into_iter())?;
        Ok(LayerNorm {
            epsilon: cfg.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3),
            axis,
            ss,
        })
    }
}

/// `x̂` and `rsqrt(variance + ε)` per row, and the rows' shape.
struct NormCache<T> {
    xhat: Array2<T>,
    inv: Vec<T>,
    shape: Vec<usize>,
}

impl<T: Element> TrainOp<T> for LayerNorm<T> {
    fn class(&self) -> &'static str {
        "LayerNormalization"
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        mask: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        crate::graph::last_axis(name, self.axis, x.ndim())?;
        let shape = x.shape().to_vec();
        let width = *shape.last().expect("checked rank");
        self.ss.check_width(name, width)?;
        let rows = x.len() / width.max(1);
        let x2 = x
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((rows, width))
            .expect("rows of the last axis");
        let n = T::from_f64(width as f64);
        let eps = T::from_f64(self.epsilon);
        let mut y = Array2::<T>::zeros((rows, width));
        let mut xhat = Array2::<T>::zeros((rows, width));
        let mut invs = Vec::with_capacity(rows);
        for r in 0..rows {
            let row = x2.row(r);
            let mean = row.iter().fold(T::zero(), |a, &v| a + v) / n;
            let var = row
                .iter()
                .fold(T::zero(), |a, &v| a + (v - mean) * (v - mean))
                / n;
            let inv = T::one() / T::from_f64((var + eps).to_f64().sqrt());
            for j in 0..width {
                let (g, b) = (self.ss.gamma(j), self.ss.beta(j));
                let ig = inv * g;
                y[[r, j]] = row[j] * ig + (b - mean * ig);
                xhat[[r, j]] = (row[j] - mean) * inv;
            }
            invs.push(inv);
        }
        Ok(OpForward {
            y: y.into_shape_with_order(ndarray::IxDyn(&shape))
                .expect("the input's shape"),
            mask: mask.cloned(),
            cache: Box::new(NormCache {
                xhat,
                inv: invs,
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
        let c = cache_of::<NormCache<T>>(cache, name)?;
        let (rows, width) = c.xhat.dim();
        let d2 = d
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((rows, width))
            .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
        let n = T::from_f64(width as f64);
        let mut dx = Array2::<T>::zeros((rows, width));
        for r in 0..rows {
            let g = |j: usize| d2[[r, j]] * self.ss.gamma(j);
            let (mut mg, mut mgx) = (T::zero(), T::zero());
            for j in 0..width {
                mg += g(j);
                mgx += g(j) * c.xhat[[r, j]];
            }
            let (mg, mgx) = (mg / n, mgx / n);
            for j in 0..width {
                dx[[r, j]] = c.inv[r] * (g(j) - mg - c.xhat[[r, j]] * mgx);
            }
        }
        let grads = self
            .ss
            .grads((&d2 * &c.xhat).sum_axis(Axis(0)), d2.sum_axis(Axis(0)));
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

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}
