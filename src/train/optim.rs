//! Keras 3's optimizers, update for update (`keras/src/optimizers/*.py`), computed in the
//! weights' own type as Keras casts to the variable's dtype: gradient clipping first
//! (`clipnorm` per variable, `global_clipnorm` over all, or `clipvalue`), then the weight
//! decay `w -= w · wd · lr` where set (AdamW's default 0.004), then the update:
//!
//! ```text
//! SGD:      m = momentum·m - lr·g;  w += m  (nesterov: w += momentum·m - lr·g);  no momentum: w -= lr·g
//! Adam:     m += (g - m)(1 - β1);  v += (g² - v)(1 - β2)
//!           w -= m · lr·sqrt(1 - β2^t)/(1 - β1^t) / (sqrt(v) + ε)
//! RMSprop:  v = ρ·v + (1 - ρ)·g²;  inc = lr·g / sqrt(v + ε)  (centered: v - ḡ² + ε)
//!           w -= inc  (momentum: m = momentum·m + inc; w -= m)
//! ```
//!
//! with Keras's defaults (SGD lr 0.01; Adam/AdamW lr 0.001, β 0.9/0.999, ε 1e-7; RMSprop lr
//! 0.001, ρ 0.9, ε 1e-7).

use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{ArrayD, ArrayViewMutD};

/// Which update rule, with its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// `keras.optimizers.SGD`.
    Sgd {
        /// Momentum (0: none).
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// `keras.optimizers.Adam` (and `AdamW`, which adds the weight decay).
    Adam {
        /// β1.
        beta_1: f64,
        /// β2.
        beta_2: f64,
        /// ε.
        epsilon: f64,
    },
    /// `keras.optimizers.RMSprop`.
    RmsProp {
        /// ρ.
        rho: f64,
        /// Momentum (0: none).
        momentum: f64,
        /// ε.
        epsilon: f64,
        /// Centered (divides by the variance of the gradient).
        centered: bool,
    },
}

/// An optimizer and its state (one set of slots per weight, made on the first step).
///
/// ```
/// use lstm_wgpu::train::Optimizer;
/// let mut opt = Optimizer::sgd(0.1);
/// let mut w = vec![ndarray::arr1(&[1.0f64, -2.0]).into_dyn()];
/// let g = vec![ndarray::arr1(&[0.5f64, 0.5]).into_dyn()];
/// opt.apply(&mut w, &g).unwrap();
/// assert_eq!(w[0], ndarray::arr1(&[0.95, -2.05]).into_dyn());
/// ```
#[derive(Debug, Clone)]
pub struct Optimizer {
    /// The update rule.
    pub rule: Rule,
    /// The learning rate.
    pub learning_rate: f64,
    /// `w -= w · weight_decay · lr` before each update, where set.
    pub weight_decay: Option<f64>,
    /// Clip each gradient to this L2 norm.
    pub clipnorm: Option<f64>,
    /// Clip all gradients together to this L2 norm.
    pub global_clipnorm: Option<f64>,
    /// Clip each gradient value to `[-clipvalue, clipvalue]`.
    pub clipvalue: Option<f64>,
    iterations: u64,
    slots: Vec<[Option<ArrayD<f64>>; 3]>,
}

impl Optimizer {
    fn with(rule: Rule, learning_rate: f64) -> Self {
        Optimizer {
            rule,
            learning_rate,
            weight_decay: None,
            clipnorm: None,
            global_clipnorm: None,
            clipvalue: None,
            iterations: 0,
            slots: Vec::new(),
        }
    }

    /// SGD without momentum (set [`Optimizer::momentum`]).
    pub fn sgd(learning_rate: f64) -> Self {
        Self::with(
            Rule::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            learning_rate,
        )
    }

    /// Adam with Keras's defaults.
    pub fn adam(learning_rate: f64) -> Self {
        Self::with(
            Rule::Adam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
            learning_rate,
        )
    }

    /// AdamW: Adam with the weight decay `weight_decay` (Keras's default 0.004).
    pub fn adamw(learning_rate: f64, weight_decay: f64) -> Self {
        let mut o = Self::adam(learning_rate);
        o.weight_decay = Some(weight_decay);
        o
    }

    /// RMSprop with Keras's defaults.
    pub fn rmsprop(learning_rate: f64) -> Self {
        Self::with(
            Rule::RmsProp {
                rho: 0.9,
                momentum: 0.0,
                epsilon: 1e-7,
                centered: false,
            },
            learning_rate,
        )
    }

    /// Sets the momentum (SGD, RMSprop) and, for SGD, Nesterov's form.
    pub fn momentum(mut self, value: f64, nesterov_form: bool) -> Self {
        match &mut self.rule {
            Rule::Sgd { momentum, nesterov } => {
                *momentum = value;
                *nesterov = nesterov_form;
            }
            Rule::RmsProp { momentum, .. } => *momentum = value,
            Rule::Adam { .. } => {}
        }
        self
    }

    /// Reads a Keras optimizer config (`{"class_name": "Adam", "config": {...}}` as
    /// `optimizer.get_config()` and `model.compile` save it, or the config alone with a
    /// `"name"`): the rule, learning rate, clipping and weight decay.
    pub fn from_keras(class: &str, cfg: &serde_json::Value) -> Result<Self> {
        let f = |k: &str| cfg.get(k).and_then(serde_json::Value::as_f64);
        let lr = |d: f64| {
            cfg.get("learning_rate")
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        LstmError::unsupported("learning_rate", format!("{v} (a schedule)"))
                    })
                })
                .unwrap_or(Ok(d))
        };
        let mut o = match class.to_ascii_lowercase().as_str() {
            "sgd" => Self::sgd(lr(0.01)?).momentum(
                f("momentum").unwrap_or(0.0),
                cfg.get("nesterov")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false),
            ),
            "adam" | "adamw" => {
                let mut o = Self::adam(lr(0.001)?);
                o.rule = Rule::Adam {
                    beta_1: f("beta_1").unwrap_or(0.9),
                    beta_2: f("beta_2").unwrap_or(0.999),
                    epsilon: f("epsilon").unwrap_or(1e-7),
                };
                if cfg.get("amsgrad").and_then(serde_json::Value::as_bool) == Some(true) {
                    return Err(LstmError::unsupported("amsgrad", "true"));
                }
                if class.eq_ignore_ascii_case("adamw") {
                    o.weight_decay = Some(f("weight_decay").unwrap_or(0.004));
                }
                o
            }
            "rmsprop" => {
                let mut o = Self::rmsprop(lr(0.001)?);
                o.rule = Rule::RmsProp {
                    rho: f("rho").unwrap_or(0.9),
                    momentum: f("momentum").unwrap_or(0.0),
                    epsilon: f("epsilon").unwrap_or(1e-7),
                    centered: cfg.get("centered").and_then(serde_json::Value::as_bool)
                        == Some(true),
                };
                o
            }
            other => return Err(LstmError::unsupported("optimizer", other)),
        };
        // (what changes the steps but is not built: refused, never ignored)
        if cfg.get("use_ema").and_then(serde_json::Value::as_bool) == Some(true) {
            return Err(LstmError::unsupported(
                "use_ema",
                "true (the weights' moving average that overwrites them)",
            ));
        }
        for key in ["gradient_accumulation_steps", "loss_scale_factor"] {
            match cfg.get(key) {
                None | Some(serde_json::Value::Null) => {}
                Some(v) => return Err(LstmError::unsupported(key, v.to_string())),
            }
        }
        if o.weight_decay.is_none() {
            o.weight_decay = f("weight_decay").filter(|&w| w > 0.0);
        }
        o.clipnorm = f("clipnorm").filter(|&v| v > 0.0);
        o.global_clipnorm = f("global_clipnorm").filter(|&v| v > 0.0);
        o.clipvalue = f("clipvalue").filter(|&v| v > 0.0);
        Ok(o)
    }

    /// The steps applied so far (Keras's `optimizer.iterations`).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Each weight's slots (empty before the first step).
    pub(super) fn slots(&self) -> &[[Option<ArrayD<f64>>; 3]] {
        &self.slots
    }

    /// Replaces the step count and the slots (one triple per trainable weight, or none).
    pub(super) fn set_slots(&mut self, iterations: u64, slots: Vec<[Option<ArrayD<f64>>; 3]>) {
        self.iterations = iterations;
        self.slots = slots;
    }

    /// One update of `weights` by `grads` (the same shapes, in the same order every call).
    pub fn apply<T: Element>(
        &mut self,
        weights: &mut [ArrayD<T>],
        grads: &[ArrayD<T>],
    ) -> Result<()> {
        let mut views: Vec<ArrayViewMutD<'_, T>> =
            weights.iter_mut().map(|w| w.view_mut()).collect();
        self.apply_views(&mut views, grads)
    }

    /// [`Optimizer::apply`] on views of the weights (a model's own arrays, updated in place).
    pub fn apply_views<T: Element>(
        &mut self,
        weights: &mut [ArrayViewMutD<'_, T>],
        grads: &[ArrayD<T>],
    ) -> Result<()> {
        self.apply_views_sparse(weights, grads, &[])
    }

    /// [`Optimizer::apply_views`] where some gradients are Keras's `IndexedSlices` (an
    /// Embedding table's: one slice per looked-up token): `squares[k]`, when given, holds
    /// per element the sum over the slices of their squares, which Keras's TensorFlow
    /// optimizers use in place of `g²` (Adam's and RMSprop's second moments, the clipping
    /// norms) because they square the slices before summing them. Empty `squares`: every
    /// gradient dense. `clipvalue` clips each slice, which these sums cannot give: an error
    /// with a sparse gradient.
    pub fn apply_views_sparse<T: Element>(
        &mut self,
        weights: &mut [ArrayViewMutD<'_, T>],
        grads: &[ArrayD<T>],
        squares: &[Option<ArrayD<T>>],
    ) -> Result<()> {
        let mut squares: Vec<Option<ArrayD<T>>> = squares.to_vec();
        squares.resize(grads.len(), None);
        for (k, (s, g)) in squares.iter().zip(grads).enumerate() {
            if let Some(s) = s {
                if s.shape() != g.shape() {
                    return Err(LstmError::shape(
                        format!("squares {k}"),
                        g.shape(),
                        s.shape(),
                    ));
                }
                if self.clipvalue.is_some() {
                    return Err(LstmError::unsupported(
                        "clipvalue",
                        format!(
                            "with the sparse gradient {k} (an Embedding's): Keras clips each \
                             looked-up row, which is not built"
                        ),
                    ));
                }
            }
        }
        super::check_shapes(
            "gradients",
            &weights.iter().map(|w| w.shape()).collect::<Vec<_>>(),
            &grads.iter().map(|g| g.shape()).collect::<Vec<_>>(),
        )?;
        if self.slots.is_empty() {
            self.slots = weights.iter().map(|_| [None, None, None]).collect();
        } else if self.slots.len() != weights.len() {
            return Err(LstmError::invalid(
                "weights",
                format!(
                    "{} now, {} at the first step",
                    weights.len(),
                    self.slots.len()
                ),
            ));
        }
        let c = |v: f64| T::from_f64(v);
        // clipping
        let mut grads: Vec<ArrayD<T>> = grads.to_vec();
        // (a sparse gradient's squared norm is the sum of its slices' squares)
        let square_sum = |g: &ArrayD<T>, s: &Option<ArrayD<T>>| match s {
            Some(s) => s.iter().fold(T::zero(), |a, &x| a + x),
            None => g.iter().fold(T::zero(), |a, &x| a + x * x),
        };
        if let Some(norm) = self.clipnorm {
            for (g, s) in grads.iter_mut().zip(&mut squares) {
                let l2sum = square_sum(g, s);
                if l2sum > T::zero() {
                    let l2 = T::from_f64(l2sum.to_f64().sqrt());
                    let d = l2.elem_max(c(norm));
                    g.mapv_inplace(|x| x * c(norm) / d);
                    if let Some(s) = s {
                        s.mapv_inplace(|x| x * (c(norm) / d) * (c(norm) / d));
                    }
                }
            }
        } else if let Some(norm) = self.global_clipnorm {
            let sum: f64 = grads
                .iter()
                .zip(&squares)
                .map(|(g, s)| square_sum(g, s).to_f64())
                .sum();
            let global = sum.sqrt();
            let scale = norm / global.max(norm);
            for (g, s) in grads.iter_mut().zip(&mut squares) {
                g.mapv_inplace(|x| x * c(scale));
                if let Some(s) = s {
                    s.mapv_inplace(|x| x * c(scale) * c(scale));
                }
            }
        } else if let Some(v) = self.clipvalue {
            for g in &mut grads {
                g.mapv_inplace(|x| x.elem_max(c(-v)).elem_min(c(v)));
            }
        }
        let lr = c(self.learning_rate);
        if let Some(wd) = self.weight_decay {
            for w in weights.iter_mut() {
                w.mapv_inplace(|x| x - x * c(wd) * lr);
            }
        }
        self.iterations += 1;
        let step = self.iterations as f64;
        for (((w, g), slots), sq) in weights
            .iter_mut()
            .zip(&grads)
            .zip(&mut self.slots)
            .zip(&squares)
        {
            let dim = w.raw_dim();
            // g² per element (a sparse gradient's: its slices' squares summed)
            let gg: ArrayD<T> = match sq {
                Some(s) => s.clone(),
                None => g.mapv(|x| x * x),
            };
            // (slots are kept in f64, holding the T values exactly)
            let slot = |slots: &mut [Option<ArrayD<f64>>; 3], k: usize| -> ArrayD<T> {
                slots[k]
                    .get_or_insert_with(|| ArrayD::zeros(dim.clone()))
                    .mapv(T::from_f64)
            };
            match self.rule {
                Rule::Sgd { momentum, nesterov } => {
                    if momentum != 0.0 {
                        let mut m = slot(slots, 0);
                        ndarray::Zip::from(&mut m).and(g).for_each(|m, &g| {
                            *m = *m * c(momentum) - g * lr;
                        });
                        ndarray::Zip::from(&mut *w)
                            .and(&m)
                            .and(g)
                            .for_each(|w, &m, &g| {
                                *w = if nesterov {
                                    *w + (m * c(momentum) - g * lr)
                                } else {
                                    *w + m
                                };
                            });
                        slots[0] = Some(m.mapv(T::to_f64));
                    } else {
                        ndarray::Zip::from(&mut *w)
                            .and(g)
                            .for_each(|w, &g| *w = *w - g * lr);
                    }
                }
                Rule::Adam {
                    beta_1,
                    beta_2,
                    epsilon,
                } => {
                    let (b1, b2) = (c(beta_1), c(beta_2));
                    let p1 = c(b1.to_f64().powf(step));
                    let p2 = c(b2.to_f64().powf(step));
                    let one = T::one();
                    let alpha = lr * T::from_f64((one - p2).to_f64().sqrt()) / (one - p1);
                    let (mut m, mut v) = (slot(slots, 0), slot(slots, 1));
                    ndarray::Zip::from(&mut m)
                        .and(&mut v)
                        .and(g)
                        .and(&gg)
                        .for_each(|m, v, &g, &gg| {
                            *m = *m + (g - *m) * c(1.0 - beta_1);
                            *v = *v + (gg - *v) * c(1.0 - beta_2);
                        });
                    ndarray::Zip::from(&mut *w)
                        .and(&m)
                        .and(&v)
                        .for_each(|w, &m, &v| {
                            *w = *w - (m * alpha) / (T::from_f64(v.to_f64().sqrt()) + c(epsilon));
                        });
                    slots[0] = Some(m.mapv(T::to_f64));
                    slots[1] = Some(v.mapv(T::to_f64));
                }
                Rule::RmsProp {
                    rho,
                    momentum,
                    epsilon,
                    centered,
                } => {
                    let mut v = slot(slots, 0);
                    ndarray::Zip::from(&mut v).and(&gg).for_each(|v, &gg| {
                        *v = c(rho) * *v + c(1.0 - rho) * gg;
                    });
                    let mut inc = v.mapv(|v| v + c(epsilon));
                    if centered {
                        let mut a = slot(slots, 1);
                        ndarray::Zip::from(&mut a).and(g).for_each(|a, &g| {
                            *a = c(rho) * *a + c(1.0 - rho) * g;
                        });
                        ndarray::Zip::from(&mut inc)
                            .and(&v)
                            .and(&a)
                            .for_each(|d, &v, &a| {
                                *d = v - a * a + c(epsilon);
                            });
                        slots[1] = Some(a.mapv(T::to_f64));
                    }
                    ndarray::Zip::from(&mut inc).and(g).for_each(|d, &g| {
                        *d = (lr * g) / T::from_f64(d.to_f64().sqrt());
                    });
                    if momentum > 0.0 {
                        let mut m = slot(slots, 2);
                        ndarray::Zip::from(&mut m).and(&inc).for_each(|m, &i| {
                            *m = c(momentum) * *m + i;
                        });
                        ndarray::Zip::from(&mut *w)
                            .and(&m)
                            .for_each(|w, &m| *w = *w - m);
                        slots[2] = Some(m.mapv(T::to_f64));
                    } else {
                        ndarray::Zip::from(&mut *w)
                            .and(&inc)
                            .for_each(|w, &i| *w = *w - i);
                    }
                    slots[0] = Some(v.mapv(T::to_f64));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Optimizer;
    use ndarray::{arr1, ArrayD};

    fn step(opt: &mut Optimizer, w: &[&[f64]], g: &[&[f64]]) -> Vec<ArrayD<f64>> {
        let mut w: Vec<ArrayD<f64>> = w.iter().map(|v| arr1(v).into_dyn()).collect();
        let g: Vec<ArrayD<f64>> = g.iter().map(|v| arr1(v).into_dyn()).collect();
        opt.apply(&mut w, &g).unwrap();
        w
    }

    fn close(a: &ArrayD<f64>, b: &[f64]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    /// A sparse gradient (two slices 3 and 4 summed into one element): Adam's second moment
    /// and clipnorm's norm take the slices' squares (9 + 16), not the sum's (49); clipvalue
    /// is refused.
    #[test]
    fn sparse_gradients_use_their_slices_squares() {
        let run = |mut o: Optimizer| {
            let mut w = [arr1(&[1.0f64]).into_dyn()];
            let g = vec![arr1(&[7.0f64]).into_dyn()];
            let sq = vec![Some(arr1(&[25.0f64]).into_dyn())];
            let mut views: Vec<_> = w.iter_mut().map(|w| w.view_mut()).collect();
            o.apply_views_sparse(&mut views, &g, &sq).map(|_| w[0][0])
        };
        // Adam step 1: w - lr·sqrt(1-b2)/(1-b1)·m/(sqrt(v)+eps), m = 0.1·7, v = 0.001·25
        let lr = 0.1;
        let want = 1.0 - lr * (0.001f64).sqrt() / 0.1 * 0.7 / ((0.001f64 * 25.0).sqrt() + 1e-7);
        assert!((run(Optimizer::adam(lr)).unwrap() - want).abs() < 1e-12);
        // clipnorm 1: the norm is 5, the gradient scaled by 1/5
        let mut o = Optimizer::sgd(1.0);
        o.clipnorm = Some(1.0);
        assert!((run(o).unwrap() - (1.0 - 7.0 / 5.0)).abs() < 1e-12);
        let mut o = Optimizer::sgd(1.0);
        o.clipvalue = Some(1.0);
        assert!(run(o).unwrap_err().to_string().contains("clipvalue"));
    }

    /// Each clipping rule by hand: per-variable norm, global norm, value; then Adam's and
    /// RMSprop's first step and SGD's Nesterov step.
    #[test]
    fn clipping_and_first_steps_by_hand() {
        let mut o = Optimizer::sgd(1.0);
        o.clipnorm = Some(1.0);
        let w = step(&mut o, &[&[0.0, 0.0], &[0.0]], &[&[3.0, 4.0], &[0.5]]);
        assert!(
            close(&w[0], &[-0.6, -0.8]) && close(&w[1], &[-0.5]),
            "{w:?}"
        );
        let mut o = Optimizer::sgd(1.0);
        o.global_clipnorm = Some(1.0);
        let w = step(&mut o, &[&[0.0], &[0.0]], &[&[3.0], &[4.0]]);
        assert!(close(&w[0], &[-0.6]) && close(&w[1], &[-0.8]), "{w:?}");
        let mut o = Optimizer::sgd(1.0);
        o.clipvalue = Some(0.5);
        let w = step(&mut o, &[&[0.0, 0.0]], &[&[2.0, -0.1]]);
        assert!(close(&w[0], &[-0.5, 0.1]), "{w:?}");
        // Adam's first step: m = 0.1 g, v = 0.001 g², alpha = lr sqrt(0.001) / 0.1
        let mut o = Optimizer::adam(0.01);
        let w = step(&mut o, &[&[1.0]], &[&[2.0]]);
        let alpha = 0.01 * 0.001f64.sqrt() / 0.1;
        assert!(
            close(&w[0], &[1.0 - alpha * 0.2 / (0.001f64.sqrt() * 2.0 + 1e-7)]),
            "{w:?}"
        );
        // RMSprop: v = 0.1 g², w -= lr g / sqrt(v + eps)
        let mut o = Optimizer::rmsprop(0.01);
        let w = step(&mut o, &[&[1.0]], &[&[2.0]]);
        assert!(
            close(&w[0], &[1.0 - 0.02 / (0.4f64 + 1e-7).sqrt()]),
            "{w:?}"
        );
        // SGD Nesterov, two steps: m1 = -lr g; w1 = w0 + μ m1 - lr g; m2 = μ m1 - lr g ...
        let mut o = Optimizer::sgd(0.1).momentum(0.9, true);
        let w = step(&mut o, &[&[1.0]], &[&[1.0]]);
        assert!(close(&w[0], &[1.0 + 0.9 * -0.1 - 0.1]), "{w:?}");
        // AdamW decays first: w -= w · wd · lr
        let mut o = Optimizer::adamw(0.1, 0.5);
        let w = step(&mut o, &[&[2.0]], &[&[0.0]]);
        assert!(close(&w[0], &[2.0 - 2.0 * 0.5 * 0.1]), "{w:?}");
        assert_eq!(o.iterations(), 1);
    }
}
