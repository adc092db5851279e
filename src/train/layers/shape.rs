//! `RepeatVector`, `Flatten`, `Reshape`, `Permute` and `Activation` with their backward
//! passes.

use super::super::activation::{dense_activate, dense_activation_backward};
use super::{cache_of, OpCache, OpForward, TrainOp};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::model::DenseActivation;
use ndarray::{Array2, ArrayD, ArrayViewD, Axis, Ix2, Ix3, IxDyn};

/// `RepeatVector(n)`: `[B, C]` to `[B, n, C]`; the cotangent is summed over the copies.
/// Drops the mask.
#[derive(Debug, Clone)]
pub(super) struct RepeatVector {
    pub(super) n: usize,
}

impl<T: Element> TrainOp<T> for RepeatVector {
    fn class(&self) -> &'static str {
        "RepeatVector"
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        _: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        let x2 = x
            .view()
            .into_dimensionality::<Ix2>()
            .map_err(|_| LstmError::shape(format!("input of layer {name}"), &[0, 0], x.shape()))?;
        let (b, c) = x2.dim();
        let y = x2
            .insert_axis(Axis(1))
            .broadcast((b, self.n, c))
            .expect("one step broadcasts")
            .to_owned();
        Ok(OpForward {
            y: y.into_dyn(),
            mask: None,
            cache: Box::new(()),
        })
    }

    fn backward(
        &self,
        name: &str,
        _: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let d = d
            .into_dimensionality::<Ix3>()
            .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
        Ok((d.sum_axis(Axis(1)).into_dyn(), Vec::new()))
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}

/// `Flatten` (`target` None: `[B, ...]` to `[B, prod(...)]`) or `Reshape(target_shape)`
/// (one `-1` entry inferred), row-major; the cotangent reshaped back. Drops the mask.
#[derive(Debug, Clone)]
pub(super) struct Flatten {
    pub(super) target: Option<Vec<i64>>,
}

impl<T: Element> TrainOp<T> for Flatten {
    fn class(&self) -> &'static str {
        if self.target.is_some() {
            "Reshape"
        } else {
            "Flatten"
        }
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        _: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        let shape = x.shape().to_vec();
        let Some(&b) = shape.first() else {
            return Err(LstmError::shape(
                format!("input of layer {name}"),
                &[0, 0],
                &shape,
            ));
        };
        let want = crate::graph::reshape_target(b, x.len(), self.target.as_deref());
        let y = x
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&want))
            .map_err(|_| {
                LstmError::shape(format!("target_shape of layer {name}"), &want, &shape)
            })?;
        Ok(OpForward {
            y,
            mask: None,
            cache: Box::new(shape),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let shape = cache_of::<Vec<usize>>(cache, name)?;
        let dx = d
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(shape))
            .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
        Ok((dx, Vec::new()))
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}

/// `Activation(f)`: element-wise, or softmax over the last axis; keeps the mask.
#[derive(Debug, Clone)]
pub(super) struct ActivationOp {
    pub(super) activation: DenseActivation,
}

impl<T: Element> TrainOp<T> for ActivationOp {
    fn class(&self) -> &'static str {
        "Activation"
    }

    fn forward(
        &self,
        _: &str,
        x: ArrayViewD<'_, T>,
        mask: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        let z = x.to_owned();
        Ok(OpForward {
            y: dense_activate(self.activation, &z),
            mask: mask.cloned(),
            cache: Box::new(z),
        })
    }

    fn backward(
        &self,
        name: &str,
        cache: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let z = cache_of::<ArrayD<T>>(cache, name)?;
        Ok((
            dense_activation_backward(self.activation, z, &d),
            Vec::new(),
        ))
    }

    fn backward_from_logits(
        &self,
        _: &str,
        _: &OpCache,
        d: ArrayD<T>,
    ) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        // (the logits are this layer's input)
        Ok((d, Vec::new()))
    }

    fn logits(&self, cache: &OpCache) -> Option<ArrayD<T>> {
        <Self as TrainOp<T>>::logits_activation(self)?;
        cache.downcast_ref::<ArrayD<T>>().cloned()
    }

    fn logits_activation(&self) -> Option<DenseActivation> {
        let sigmoid = DenseActivation::Elementwise(crate::Activation::Sigmoid);
        (self.activation == DenseActivation::Softmax || self.activation == sigmoid)
            .then_some(self.activation)
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}

/// `Permute(dims)`: the axes after the batch axis reordered (`dims` 1-based, as Keras's);
/// the cotangent permuted back. Drops the mask.
#[derive(Debug, Clone)]
pub(super) struct Permute {
    /// 0-based, the batch axis first.
    pub(super) axes: Vec<usize>,
}

impl<T: Element> TrainOp<T> for Permute {
    fn class(&self) -> &'static str {
        "Permute"
    }

    fn forward(
        &self,
        name: &str,
        x: ArrayViewD<'_, T>,
        _: Option<&Array2<bool>>,
        _: Option<u64>,
    ) -> Result<OpForward<T>> {
        if x.ndim() != self.axes.len() {
            return Err(LstmError::shape(
                format!("input of layer {name}"),
                &vec![0; self.axes.len()],
                x.shape(),
            ));
        }
        let y = x
            .view()
            .permuted_axes(IxDyn(&self.axes))
            .as_standard_layout()
            .into_owned();
        Ok(OpForward {
            y,
            mask: None,
            cache: Box::new(()),
        })
    }

    fn backward(&self, _: &str, _: &OpCache, d: ArrayD<T>) -> Result<(ArrayD<T>, Vec<ArrayD<T>>)> {
        let mut inverse = vec![0; self.axes.len()];
        for (k, &a) in self.axes.iter().enumerate() {
            inverse[a] = k;
        }
        Ok((
            d.permuted_axes(IxDyn(&inverse))
                .as_standard_layout()
                .into_owned(),
            Vec::new(),
        ))
    }

    fn clone_box(&self) -> Box<dyn TrainOp<T>> {
        Box::new(self.clone())
    }
}
