//! Keras 3's losses (TensorFlow backend) with their gradients: the per-sample loss over the
//! last axis, then Keras's `sum_over_batch_size` reduction (the mean over every sample
//! position; under the prediction's mask, the sum over the valid positions divided by
//! their count). The cross-entropies clip probabilities to `[1e-7, 1 - 1e-7]` as Keras does;
//! when the model's output comes from a sigmoid or softmax, Keras computes the
//! cross-entropies from its logits instead (the `_keras_logits` it caches), and so does
//! [`Loss::evaluate`] when given them.

use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// Keras's `backend.epsilon()`.
const EPSILON: f64 = 1e-7;

/// A loss, as `model.compile(loss=...)` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// `mean((y - p)^2)` over the last axis.
    MeanSquaredError,
    /// `mean(|y - p|)` over the last axis.
    MeanAbsoluteError,
    /// Binary cross-entropy, element-wise, averaged over the last axis.
    BinaryCrossentropy {
        /// Whether the predictions are logits.
        from_logits: bool,
    },
    /// Categorical cross-entropy against one-hot (or soft) targets.
    CategoricalCrossentropy {
        /// Whether the predictions are logits.
        from_logits: bool,
    },
    /// Categorical cross-entropy against integer class targets (`[.., 1]` or without the
    /// last axis).
    SparseCategoricalCrossentropy {
        /// Whether the predictions are logits.
        from_logits: bool,
    },
    /// Keras's `CTC` loss (`keras.losses.CTC`): predictions `[B, T, classes]` read as
    /// logits, targets `[B, max_label_length]` of class ids padded with 0 (the blank) at the
    /// end; the mean over the batch of `-log p(label | x)`.
    Ctc,
}

/// A loss's value and its gradient.
#[derive(Debug, Clone)]
pub struct LossGrad<T> {
    /// The reduced loss.
    pub value: T,
    /// dL/d(predictions), or dL/d(logits) when `wrt_logits`.
    pub grad: ArrayD<T>,
    /// Whether `grad` is with respect to the logits (the activation's gradient is then
    /// already included).
    pub wrt_logits: bool,
}

impl Loss {
    /// The loss a Keras name or class names (`"mse"`, `"mean_squared_error"`,
    /// `"MeanSquaredError"`, `"binary_crossentropy"`, ...), probabilities expected.
    ///
    /// ```
    /// use lstm_wgpu::train::Loss;
    /// assert_eq!(Loss::from_keras("mse").unwrap(), Loss::MeanSquaredError);
    /// assert!(Loss::from_keras("huber").is_err());
    /// ```
    pub fn from_keras(name: &str) -> Result<Self> {
        let from_logits = false;
        Ok(match name {
            "mse" | "mean_squared_error" | "MeanSquaredError" => Loss::MeanSquaredError,
            "mae" | "mean_absolute_error" | "MeanAbsoluteError" => Loss::MeanAbsoluteError,
            "binary_crossentropy" | "BinaryCrossentropy" => {
                Loss::BinaryCrossentropy { from_logits }
            }
            "categorical_crossentropy" | "CategoricalCrossentropy" => {
                Loss::CategoricalCrossentropy { from_logits }
            }
            "sparse_categorical_crossentropy" | "SparseCategoricalCrossentropy" => {
                Loss::SparseCategoricalCrossentropy { from_logits }
            }
            "ctc" | "CTC" => Loss::Ctc,
            other => return Err(LstmError::unsupported("loss", other)),
        })
    }

    /// Whether Keras would compute this loss from cached logits of a sigmoid or softmax
    /// output.
    pub(crate) fn uses_logits(&self) -> bool {
        matches!(
            self,
            Loss::BinaryCrossentropy { .. }
                | Loss::CategoricalCrossentropy { .. }
                | Loss::SparseCategoricalCrossentropy { .. }
        )
    }

    /// The loss of `pred` against `target` and its gradient. `logits`: the pre-activation
    /// of a sigmoid or softmax output (Keras then computes a cross-entropy from them);
    /// `mask`: the prediction's Keras mask over its leading axes.
    pub fn evaluate<T: Element>(
        &self,
        pred: ArrayViewD<'_, T>,
        logits: Option<ArrayViewD<'_, T>>,
        target: ArrayViewD<'_, T>,
        mask: Option<ArrayViewD<'_, bool>>,
    ) -> Result<LossGrad<T>> {
        if *self == Loss::Ctc {
            return super::ctc_loss::ctc(pred, target, mask);
        }
        let shape = pred.shape().to_vec();
        let (&c, lead) = shape
            .split_last()
            .ok_or_else(|| LstmError::invalid("predictions", "a scalar has no class axis"))?;
        let rows: usize = lead.iter().product();
        let sparse = matches!(self, Loss::SparseCategoricalCrossentropy { .. });
        let target_ok = if sparse {
            target.shape() == lead || (target.shape().split_last() == Some((&1, lead)))
        } else {
            target.shape() == shape.as_slice()
        };
        if !target_ok {
            let mut want = lead.to_vec();
            if !sparse {
                want.push(c);
            }
            return Err(LstmError::shape("targets", &want, target.shape()));
        }
        if let Some(m) = &mask {
            if m.shape() != lead {
                return Err(LstmError::shape("loss mask", lead, m.shape()));
            }
        }
        let p = pred.as_standard_layout();
        let p = p.as_slice().expect("a standard layout");
        let y = target.as_standard_layout();
        let y = y.as_slice().expect("a standard layout");
        let z = logits.map(|l| l.as_standard_layout().into_owned());
        let z = match (&z, self.uses_logits()) {
            (Some(z), true) if z.shape() == shape.as_slice() => Some(z.as_slice().expect("owned")),
            _ => None,
        };
        let from_logits = z.is_some()
            || matches!(
                self,
                Loss::BinaryCrossentropy { from_logits: true }
                    | Loss::CategoricalCrossentropy { from_logits: true }
                    | Loss::SparseCategoricalCrossentropy { from_logits: true }
            );
        let have_logits = z.is_some();
        let input = z.unwrap_or(p);
        let eps = T::from_f64(EPSILON);
        let (zero, one) = (T::zero(), T::one());
        let cn = T::from_f64(c as f64);
        let mut per = vec![zero; rows];
        let mut grad = vec![zero; rows * c];
        for r in 0..rows {
            let x = &input[r * c..(r + 1) * c];
            let g = &mut grad[r * c..(r + 1) * c];
            let t = if sparse {
                &y[r..r + 1]
            } else {
                &y[r * c..(r + 1) * c]
            };
            per[r] = match self {
                Loss::MeanSquaredError => {
                    let mut s = zero;
                    for k in 0..c {
                        let d = x[k] - t[k];
                        s += d * d;
                        g[k] = T::from_f64(2.0) * d / cn;
                    }
                    s / cn
                }
                Loss::MeanAbsoluteError => {
                    let mut s = zero;
                    for k in 0..c {
                        let d = x[k] - t[k];
                        s += d.abs();
                        g[k] = if d > zero {
                            one / cn
                        } else if d < zero {
                            -one / cn
                        } else {
                            zero
                        };
                    }
                    s / cn
                }
                Loss::BinaryCrossentropy { .. } if from_logits => {
                    // max(z, 0) - z·y + log(1 + e^-|z|); d/dz = sigmoid(z) - y
                    let mut s = zero;
                    for k in 0..c {
                        let zk = x[k];
                        s += zk.elem_max(zero) - zk * t[k] + (-zk.abs()).exp().ln_1p();
                        g[k] = (one / (one + (-zk).exp()) - t[k]) / cn;
                    }
                    s / cn
                }
                Loss::BinaryCrossentropy { .. } => {
                    let mut s = zero;
                    for k in 0..c {
                        let q = x[k].elem_max(eps).elem_min(one - eps);
                        s += -(t[k] * ln(q) + (one - t[k]) * ln(one - q));
                        let inside = x[k] >= eps && x[k] <= one - eps;
                        g[k] = if inside {
                            -(t[k] / q - (one - t[k]) / (one - q)) / cn
                        } else {
                            zero
                        };
                    }
                    s / cn
                }
                Loss::CategoricalCrossentropy { .. }
                | Loss::SparseCategoricalCrossentropy { .. }
                    if from_logits =>
                {
                    // -Σ y log_softmax(z); d/dz = softmax(z) - y
                    let max = x
                        .iter()
                        .fold(T::from_f64(f64::NEG_INFINITY), |m, &v| m.elem_max(v));
                    let mut sum = zero;
                    for k in 0..c {
                        g[k] = (x[k] - max).exp();
                        sum += g[k];
                    }
                    let log_sum = ln(sum);
                    let mut l = zero;
                    for k in 0..c {
                        let yk = one_hot(sparse, t, k)?;
                        l += -yk * (x[k] - max - log_sum);
                        g[k] = g[k] / sum - yk;
                    }
                    l
                }
                Loss::CategoricalCrossentropy { .. } => {
                    // q = p / Σp, clipped; -Σ y log q
                    let sum = x.iter().fold(zero, |a, &v| a + v);
                    let mut l = zero;
                    let mut dq = vec![zero; c];
                    for k in 0..c {
                        let q = x[k] / sum;
                        let qc = q.elem_max(eps).elem_min(one - eps);
                        l += -t[k] * ln(qc);
                        dq[k] = if q >= eps && q <= one - eps {
                            -t[k] / qc
                        } else {
                            zero
                        };
                    }
                    let dot = (0..c).fold(zero, |a, k| a + dq[k] * (x[k] / sum));
                    for k in 0..c {
                        g[k] = (dq[k] - dot) / sum;
                    }
                    l
                }
                Loss::SparseCategoricalCrossentropy { .. } => {
                    // logits = log(clip(p)); -log softmax(logits)_y = -log(q_y / Σq)
                    let class = class_of(t[0], c)?;
                    let q: Vec<T> = x
                        .iter()
                        .map(|&v| v.elem_max(eps).elem_min(one - eps))
                        .collect();
                    let sum = q.iter().fold(zero, |a, &v| a + v);
                    for k in 0..c {
                        let inside = x[k] >= eps && x[k] <= one - eps;
                        let d = one / sum - if k == class { one / q[k] } else { zero };
                        g[k] = if inside { d } else { zero };
                    }
                    ln(sum) - ln(q[class])
                }
                // (evaluated over whole sequences above)
                Loss::Ctc => {
                    return Err(LstmError::invalid("loss", "CTC takes whole sequences"));
                }
            };
        }
        // sum_over_batch_size: Σ loss · weight / total, the weight total/valid on the valid
        // positions under a mask
        let total = T::from_f64(rows as f64);
        let weights: Vec<T> = match &mask {
            None => vec![one; rows],
            Some(m) => {
                let m = m.as_standard_layout();
                let m = m.as_slice().expect("a standard layout");
                let valid = m.iter().filter(|&&v| v).count();
                let w = if valid == 0 {
                    zero
                } else {
                    total / T::from_f64(valid as f64)
                };
                m.iter().map(|&v| if v { w } else { zero }).collect()
            }
        };
        let mut value = zero;
        for r in 0..rows {
            value += per[r] * weights[r];
            let scale = weights[r] / total;
            grad[r * c..(r + 1) * c]
                .iter_mut()
                .for_each(|g| *g = *g * scale);
        }
        let value = if rows == 0 { zero } else { value / total };
        Ok(LossGrad {
            value,
            grad: ArrayD::from_shape_vec(IxDyn(&shape), grad).expect("the prediction's shape"),
            wrt_logits: have_logits,
        })
    }
}

fn ln<T: Element>(x: T) -> T {
    x.ln()
}

fn class_of<T: Element>(y: T, classes: usize) -> Result<usize> {
    let v = y.to_f64();
    if v < 0.0 || v.fract() != 0.0 || v as usize >= classes {
        return Err(LstmError::invalid(
            "targets",
            format!("class {v} is not an integer in 0..{classes}"),
        ));
    }
    Ok(v as usize)
}

fn one_hot<T: Element>(sparse: bool, t: &[T], k: usize) -> Result<T> {
    if sparse {
        Ok(if class_of(t[0], usize::MAX)? == k {
            T::one()
        } else {
            T::zero()
        })
    } else {
        Ok(t[k])
    }
}
