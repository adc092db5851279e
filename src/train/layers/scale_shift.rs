//! A normalization layer's optional `gamma` (Keras's `scale=True`) and `beta`
//! (`center=True`), shared by `LayerNormalization` and `BatchNormalization`: read from the
//! layer's weights in Keras's order, their values per channel, their gradients and views.

use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array1, ArrayD, ArrayViewMutD};
use serde_json::Value;

#[derive(Debug, Clone)]
pub(super) struct ScaleShift<T> {
    gamma: Option<Array1<T>>,
    beta: Option<Array1<T>>,
}

/// The next weight of `it` as a vector `{name}/{what}`, or an error naming it.
pub(super) fn vector<T>(
    it: &mut impl Iterator<Item = ArrayD<T>>,
    name: &str,
    what: &str,
) -> Result<Array1<T>> {
    let a = it.next().ok_or_else(|| LstmError::MissingWeight {
        name: format!("{name}/{what}"),
    })?;
    let shape = a.shape().to_vec();
    a.into_dimensionality::<ndarray::Ix1>()
        .map_err(|_| LstmError::shape(format!("{name}/{what}"), &[0], &shape))
}

impl<T: Element> ScaleShift<T> {
    /// `gamma` (with `scale`) then `beta` (with `center`) from `it`, of one length.
    pub(super) fn take(
        cfg: &Value,
        name: &str,
        it: &mut impl Iterator<Item = ArrayD<T>>,
    ) -> Result<Self> {
        let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(true);
        let gamma = flag("scale")
            .then(|| vector(it, name, "gamma"))
            .transpose()?;
        let beta = flag("center")
            .then(|| vector(it, name, "beta"))
            .transpose()?;
        if let (Some(g), Some(b)) = (&gamma, &beta) {
            if g.len() != b.len() {
                return Err(LstmError::shape(
                    format!("{name}/beta"),
                    &[g.len()],
                    &[b.len()],
                ));
            }
        }
        Ok(ScaleShift { gamma, beta })
    }

    /// An error unless both (where present) have `width` values.
    pub(super) fn check_width(&self, name: &str, width: usize) -> Result<()> {
        for (w, what) in [(&self.gamma, "gamma"), (&self.beta, "beta")] {
            if let Some(w) = w {
                if w.len() != width {
                    return Err(LstmError::shape(
                        format!("{name}/{what}"),
                        &[width],
                        &[w.len()],
                    ));
                }
            }
        }
        Ok(())
    }

    /// `gamma[j]` (1 without `scale`).
    pub(super) fn gamma(&self, j: usize) -> T {
        self.gamma.as_ref().map_or(T::one(), |g| g[j])
    }

    /// `beta[j]` (0 without `center`).
    pub(super) fn beta(&self, j: usize) -> T {
        self.beta.as_ref().map_or(T::zero(), |b| b[j])
    }

    /// The gradients of the present ones, in their order.
    pub(super) fn grads(&self, dgamma: Array1<T>, dbeta: Array1<T>) -> Vec<ArrayD<T>> {
        let mut out = Vec::new();
        if self.gamma.is_some() {
            out.push(dgamma.into_dyn());
        }
        if self.beta.is_some() {
            out.push(dbeta.into_dyn());
        }
        out
    }

    pub(super) fn weights(&self) -> Vec<ArrayD<T>> {
        [&self.gamma, &self.beta]
            .into_iter()
            .flatten()
            .map(|w| w.clone().into_dyn())
            .collect()
    }

    pub(super) fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        [&mut self.gamma, &mut self.beta]
            .into_iter()
            .flatten()
            .map(|w| w.view_mut().into_dyn())
            .collect()
    }
}
