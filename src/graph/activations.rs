//! The activation layers of a graph on the CPU: `Activation` (and `Softmax`), `ReLU` with
//! its options and `LeakyReLU` (Keras 3's formula, NaN included), `PReLU`. Each keeps its
//! input's mask. GPU twin: `UnaryStage` (src/gpu/plan/elementwise.rs, unary.wgsl).

use super::ops::{apply_act, one_input, stage, Act, Extra, GpuStage, Op, Uploader};
use super::Value;
use crate::error::{LstmError, Result};
use crate::gpu::plan::{UnaryOp, UnaryStage};
use ndarray::{ArrayD, IxDyn};

#[derive(Debug, Clone)]
pub(super) struct Activate(pub(super) Act);

impl Op for Activate {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "Activation")?;
        let mut data = x.data.clone();
        apply_act(self.0, &mut data);
        Ok(vec![Value {
            data,
            mask: x.mask.clone(),
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(UnaryStage {
            name: "Activation".into(),
            op: match self.0 {
                Act::Elementwise(a) => UnaryOp::Act(a),
                Act::Softmax => UnaryOp::Softmax,
            },
        })
    }
}

/// Keras 3's `relu(x, negative_slope, max_value, threshold)` (`ReLU`, `LeakyReLU`) step for
/// step as `keras.activations.ReLU.static_call` computes it on TensorFlow, NaN included
/// (measured against Keras 3.15.1): leaky_relu when only a slope is given; else
/// `where(x > threshold, x, 0)` (or relu(x) without a threshold), clipped to
/// `[0, max_value]`, minus `negative_slope · relu(threshold - x)`. relu and clip keep NaN.
pub(super) fn keras_relu(v: f32, slope: f32, threshold: f32, max: Option<f32>) -> f32 {
    let relu = |u: f32| if u > 0.0 || u.is_nan() { u } else { 0.0 };
    if slope != 0.0 && max.is_none() && threshold == 0.0 {
        return if v >= 0.0 || v.is_nan() { v } else { slope * v };
    }
    let mut y = if threshold != 0.0 {
        if v > threshold {
            v
        } else {
            0.0
        }
    } else {
        relu(v)
    };
    if let Some(m) = max {
        if !y.is_nan() {
            y = y.max(0.0).min(m);
        }
    }
    if slope != 0.0 {
        y -= slope * relu(threshold - v);
    }
    y
}

/// Keras `ReLU` with parameters, or `LeakyReLU` (`keras_relu`).
#[derive(Debug, Clone)]
pub(super) struct Leaky {
    pub(super) slope: f32,
    pub(super) threshold: f32,
    pub(super) max: Option<f32>,
}

impl Op for Leaky {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, "ReLU")?;
        let (slope, th, max) = (self.slope, self.threshold, self.max);
        let data = x.data.mapv(|v| keras_relu(v, slope, th, max));
        Ok(vec![Value {
            data,
            mask: x.mask.clone(),
        }])
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(UnaryStage {
            name: "ReLU".into(),
            op: UnaryOp::Leaky {
                slope: self.slope,
                threshold: self.threshold,
                max: self.max,
            },
        })
    }
}

/// Keras `PReLU`: `x` where `x >= 0`, else `alpha · x`, with `alpha` (shape `x.shape[1:]`,
/// 1 along `shared_axes`) broadcast over the batch. Keeps the mask.
#[derive(Debug, Clone)]
pub(super) struct PRelu {
    pub(super) name: String,
    pub(super) alpha: ArrayD<f32>,
}

impl Op for PRelu {
    fn call(&mut self, inputs: &[&Value], _: &Extra<'_>) -> Result<Vec<Value>> {
        let x = one_input(inputs, &self.name)?;
        let mut full = vec![1];
        full.extend(self.alpha.shape());
        let alpha = self
            .alpha
            .view()
            .into_shape_with_order(IxDyn(&full))
            .expect("one more unit axis");
        let alpha = alpha.broadcast(x.data.raw_dim()).ok_or_else(|| {
            LstmError::shape(
                format!("{}/alpha", self.name),
                &x.data.shape()[1..],
                self.alpha.shape(),
            )
        })?;
        let mut data = x.data.clone();
        ndarray::Zip::from(&mut data).and(&alpha).for_each(|v, &a| {
            if *v < 0.0 {
                *v *= a
            }
        });
        Ok(vec![Value {
            data,
            mask: x.mask.clone(),
        }])
    }

    fn params(&self) -> usize {
        self.alpha.len()
    }

    fn gpu(&self, _: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        stage(UnaryStage {
            name: self.name.clone(),
            op: UnaryOp::PRelu(self.alpha.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::keras_relu;

    /// Keras 3.15.1's `ReLU(...)` on [-2, -0.5, 0, 0.5, 1, 7, NaN, inf, -inf], recorded.
    #[test]
    fn relu_options_match_keras() {
        let x = [
            -2.0,
            -0.5,
            0.0,
            0.5,
            1.0,
            7.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let nan = f32::NAN;
        let (inf, ninf) = (f32::INFINITY, f32::NEG_INFINITY);
        type Options = (f32, f32, Option<f32>);
        let cases: [(Options, [f32; 9]); 6] = [
            (
                (0.3, 0.0, None),
                [-0.6, -0.15, 0.0, 0.5, 1.0, 7.0, nan, inf, ninf],
            ),
            (
                (0.1, 0.5, Some(1.5)),
                [-0.25, -0.1, -0.05, 0.0, 1.0, 1.5, nan, 1.5, ninf],
            ),
            (
                (0.0, 0.0, Some(6.0)),
                [0.0, 0.0, 0.0, 0.5, 1.0, 6.0, nan, 6.0, 0.0],
            ),
            (
                (0.0, 0.5, None),
                [0.0, 0.0, 0.0, 0.0, 1.0, 7.0, 0.0, inf, 0.0],
            ),
            (
                (0.2, 0.5, None),
                [-0.5, -0.2, -0.1, 0.0, 1.0, 7.0, nan, inf, ninf],
            ),
            (
                (0.0, 0.5, Some(0.7)),
                [0.0, 0.0, 0.0, 0.0, 0.7, 0.7, 0.0, 0.7, 0.0],
            ),
        ];
        for ((slope, th, max), want) in cases {
            for (v, w) in x.iter().zip(want) {
                let got = keras_relu(*v, slope, th, max);
                let same = (got.is_nan() && w.is_nan()) || (got - w).abs() <= 1e-6 || got == w;
                assert!(same, "relu({v}, {slope}, {th}, {max:?}) = {got}, Keras {w}");
            }
        }
    }
}
