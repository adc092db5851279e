//! The chain trainer, [`Sequential`]: its forward pass through the layers (the stateful
//! ones from their carried states), its backward pass (the loss's gradient back through
//! every layer, Keras's `trainable_weights` order), `fit` and the batch loop `fit` and the
//! graph trainer share.

use super::chain::{layer_backward, layer_forward, state_after, Cache};
use super::dropout::SplitMix;
use super::path::{CpuPath, CpuRecompute, RecurrentPath};
use super::{FitOptions, Gradients, History, Loss, Optimizer, Sequential, TrainLayer};
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array2, ArrayD, ArrayView, ArrayView2, ArrayViewD, Axis, Dimension};

/// A stateful layer's final (h, c) by its index in the chain.
type Carries<T> = Vec<(usize, (Array2<T>, Array2<T>))>;

/// A chain's forward pass: the prediction, its Keras mask, the logits of a sigmoid or
/// softmax output, the caches, and the stateful layers' final states by layer index.
struct Forward<T: Element> {
    y: ArrayD<T>,
    mask: Option<ArrayD<bool>>,
    logits: Option<ArrayD<T>>,
    caches: Vec<Cache<T>>,
    carries: Carries<T>,
}

impl<T: Element> Sequential<T> {
    /// The forward pass, the stateful layers starting from [`Sequential::carried`].
    fn forward(
        &self,
        path: &dyn RecurrentPath<T>,
        x: ArrayViewD<'_, T>,
        training: Option<u64>,
    ) -> Result<Forward<T>> {
        let mut h: ArrayD<T> = x.to_owned();
        let mut mask: Option<Array2<bool>> = None;
        let mut caches = Vec::new();
        let mut logits = None;
        let mut carries = Vec::new();
        for (at, (name, l)) in self.layers.iter().enumerate() {
            let init = self.carried_into(at, name, h.shape().first().copied())?;
            let out = layer_forward(path, at, (name, l), h, mask, init, training)?;
            h = out.y;
            mask = out.mask;
            logits = out.logits;
            caches.push(out.cache);
            carries.extend(out.carry.map(|c| (at, c)));
        }
        Ok(Forward {
            y: h,
            mask: mask.map(|m| m.into_dyn()),
            logits,
            caches,
            carries,
        })
    }

    /// The state the stateful layer at `at` starts its call on a batch of `rows` from
    /// ([`Sequential::carried`]; None: zeros, or not a stateful layer).
    fn carried_into(
        &self,
        at: usize,
        name: &str,
        rows: Option<usize>,
    ) -> Result<Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>> {
        let stateful = matches!(&self.layers[at].1,
            TrainLayer::Recurrent { config, .. } if config.stateful);
        match self.carried.get(&at) {
            Some((h0, c0)) if stateful => {
                if rows != Some(h0.nrows()) {
                    return Err(LstmError::invalid(
                        format!("batch of the stateful layer {name}"),
                        format!(
                            "{} rows; its carried state holds {} (a stateful layer keeps one \
                             batch size, as in Keras; reset_states() before changing it)",
                            rows.unwrap_or(0),
                            h0.nrows()
                        ),
                    ));
                }
                Ok(Some((h0.view(), c0.view())))
            }
            _ => Ok(None),
        }
    }

    /// Empties [`Sequential::carried`]: every stateful layer's next call starts from zeros
    /// (Keras's `layer.reset_states()` on each).
    pub fn reset_states(&mut self) {
        self.carried.clear();
    }

    /// The model's output on `x` (`[B, T, I]` features, or `[B, T]` token ids when the
    /// chain starts with an Embedding). Stateful layers start from
    /// [`Sequential::carried`] and leave it as it was (only `fit` advances it).
    pub fn predict<D: Dimension>(&self, x: ArrayView<'_, T, D>) -> Result<ArrayD<T>> {
        Ok(self.forward(&CpuPath, x.into_dyn(), None)?.y)
    }

    /// [`predict`](Self::predict) with the recurrent layers on `path`.
    pub(crate) fn predict_with(
        &self,
        path: &dyn RecurrentPath<T>,
        x: ArrayViewD<'_, T>,
    ) -> Result<ArrayD<T>> {
        Ok(self.forward(path, x, None)?.y)
    }

    /// The loss of the batch `(x, y)` (Keras's loss object on the model's output, its mask
    /// included) and its gradients w.r.t. every weight and `x`, in inference mode (Dropout
    /// is the identity: `tf.GradientTape` over `model(x, training=False)`).
    pub fn gradients<D: Dimension>(
        &self,
        x: ArrayView<'_, T, D>,
        y: ArrayViewD<'_, T>,
        loss: Loss,
    ) -> Result<Gradients<T>> {
        self.gradients_with(&CpuPath, x.into_dyn(), y, loss, None)
    }

    /// [`gradients`](Self::gradients) in training mode, as `fit` computes them: every
    /// `Dropout` layer draws its mask from `seed` (the same seed, the same masks).
    ///
    /// ```
    /// use lstm_wgpu::train::{Loss, Sequential, TrainLayer};
    /// use lstm_wgpu::model::DenseActivation;
    /// use lstm_wgpu::Activation;
    /// let net = Sequential::<f64> { layers: vec![
    ///     ("dropout".into(), TrainLayer::Dropout { rate: 0.5, noise_shape: None }),
    ///     ("dense".into(), TrainLayer::Dense { kernel: ndarray::Array2::ones((3, 1)), bias: None,
    ///         time_distributed: false,
    ///         activation: DenseActivation::Elementwise(Activation::Linear) }),
    /// ], carried: Default::default() };
    /// let x = ndarray::Array3::<f64>::ones((4, 5, 3));
    /// let y = ndarray::Array3::<f64>::zeros((4, 5, 1)).into_dyn();
    /// let a = net.gradients_in_training(x.view(), y.view(), Loss::MeanSquaredError, 1).unwrap();
    /// let b = net.gradients_in_training(x.view(), y.view(), Loss::MeanSquaredError, 1).unwrap();
    /// assert_eq!(a.weights, b.weights);
    /// // the kept inputs are doubled, the others 0: the loss differs from inference's 9
    /// assert_ne!(a.loss, net.gradients(x.view(), y.view(), Loss::MeanSquaredError).unwrap().loss);
    /// ```
    pub fn gradients_in_training<D: Dimension>(
        &self,
        x: ArrayView<'_, T, D>,
        y: ArrayViewD<'_, T>,
        loss: Loss,
        seed: u64,
    ) -> Result<Gradients<T>> {
        self.gradients_with(&CpuPath, x.into_dyn(), y, loss, Some(seed))
    }

    /// [`gradients`](Self::gradients) with the recurrent layers on `path`, in training mode
    /// with Dropout seed `training`.
    pub(crate) fn gradients_with(
        &self,
        path: &dyn RecurrentPath<T>,
        x: ArrayViewD<'_, T>,
        y: ArrayViewD<'_, T>,
        loss: Loss,
        training: Option<u64>,
    ) -> Result<Gradients<T>> {
        Ok(self.gradients_and_state(path, x, y, loss, training)?.0)
    }

    /// [`gradients_with`](Self::gradients_with), the new state of the layers that keep
    /// one (BatchNormalization's moving statistics after a training-mode forward), by layer
    /// index, and the stateful recurrent layers' final states (the next call's
    /// [`Sequential::carried`]).
    #[allow(clippy::type_complexity)]
    pub(crate) fn gradients_and_state(
        &self,
        path: &dyn RecurrentPath<T>,
        x: ArrayViewD<'_, T>,
        y: ArrayViewD<'_, T>,
        loss: Loss,
        training: Option<u64>,
    ) -> Result<(Gradients<T>, Vec<(usize, Vec<ArrayD<T>>)>, Carries<T>)> {
        let Forward {
            y: pred,
            mask,
            logits,
            caches,
            carries,
        } = self.forward(path, x, training)?;
        let states = match training {
            Some(_) => self
                .layers
                .iter()
                .zip(&caches)
                .enumerate()
                .filter_map(|(at, ((_, l), c))| Some((at, state_after(l, &l.state(), c)?)))
                .collect(),
            None => Vec::new(),
        };
        let lg = loss.evaluate(
            pred.view(),
            logits.as_ref().map(|l| l.view()),
            y,
            mask.as_ref().map(|m| m.view()),
        )?;
        let mut d = lg.grad;
        let mut skip_activation = lg.wrt_logits;
        let mut grads: Vec<Vec<ArrayD<T>>> = Vec::new();
        // (the sparse gradients' squares, by their layer's index in `grads`)
        let mut squares: Vec<(usize, ArrayD<T>)> = Vec::new();
        for (at, ((name, l), cache)) in self.layers.iter().zip(caches).enumerate().rev() {
            let back =
                layer_backward(path, at, (name, l), cache, d, [None, None], skip_activation)?;
            if let Some(sq) = back.square {
                squares.push((grads.len(), sq));
            }
            grads.push(back.weights);
            d = back.dx;
            skip_activation = false;
        }
        // (one entry per weight: None for the dense ones)
        let mut per_layer: Vec<Vec<Option<ArrayD<T>>>> =
            grads.iter().map(|l| vec![None; l.len()]).collect();
        for (k, sq) in squares {
            per_layer[k][0] = Some(sq);
        }
        let sparse_squares = per_layer.into_iter().rev().flatten().collect();
        Ok((
            Gradients {
                loss: lg.value,
                weights: grads.into_iter().rev().flatten().collect(),
                x: d,
                sparse_squares,
            },
            states,
            carries,
        ))
    }

    /// Trains on `x` (`[N, T, I]` features, or `[N, T]` token ids for a chain that starts
    /// with an Embedding) and targets `y` (leading axis N) as Keras's
    /// `model.fit(x, y, batch_size, epochs, shuffle=False)` does: the batches in order, the
    /// loss and its gradients for each, one step of `optimizer`. A loss or gradient that is
    /// not finite stops it with [`LstmError::TrainingDiverged`] naming the epoch, step and
    /// rows; the weights are then those from before that step. Logs each epoch's loss
    /// (`log::info!`) and each step's with the running mean (`log::debug!`), Keras's
    /// progress line.
    pub fn fit<D: Dimension>(
        &mut self,
        x: ArrayView<'_, T, D>,
        y: ArrayViewD<'_, T>,
        options: &FitOptions,
        optimizer: &mut Optimizer,
    ) -> Result<History> {
        let path: &dyn RecurrentPath<T> = match options.recompute {
            Some(steps) => &CpuRecompute(steps),
            None => &CpuPath,
        };
        self.fit_with(path, x.into_dyn(), y, options, optimizer, &mut |_| Ok(()))
    }

    /// [`fit`](Self::fit) with the recurrent layers on `path`; `updated` runs after each
    /// optimizer step (to upload the new weights).
    pub(crate) fn fit_with(
        &mut self,
        path: &dyn RecurrentPath<T>,
        x: ArrayViewD<'_, T>,
        y: ArrayViewD<'_, T>,
        options: &FitOptions,
        optimizer: &mut Optimizer,
        updated: &mut dyn FnMut(&Self) -> Result<()>,
    ) -> Result<History> {
        let Some(&n) = x.shape().first() else {
            return Err(LstmError::invalid("x", "has no batch axis (a scalar)"));
        };
        if y.shape().first() != Some(&n) {
            return Err(LstmError::shape(
                "targets",
                &[n],
                &y.shape()[..y.ndim().min(1)],
            ));
        }
        fit_batches(
            n,
            options,
            optimizer,
            &mut |optimizer, (start, end), seed| {
                let xb = x.slice_axis(Axis(0), (start..end).into());
                let yb = y.slice_axis(Axis(0), (start..end).into());
                let (g, states, carries) =
                    self.gradients_and_state(path, xb, yb, options.loss, Some(seed))?;
                if let Some(what) = not_finite(g.loss, &g.weights) {
                    return Ok(Err(what));
                }
                optimizer.apply_views_sparse(
                    &mut self.weights_mut(),
                    &g.weights,
                    &g.sparse_squares,
                )?;
                // (the moving statistics of a training-mode forward, as Keras assigns them)
                for (at, state) in states {
                    if let TrainLayer::Op(op) = &mut self.layers[at].1 {
                        op.set_state(&state)?;
                    }
                }
                // (and the stateful layers' final states, which the next batch starts from)
                self.carried.extend(carries);
                updated(self)?;
                Ok(Ok(g.loss.to_f64()))
            },
        )
    }
}

/// What is not finite about a step's loss and gradients, or None.
pub(super) fn not_finite<T: Element>(loss: T, grads: &[ArrayD<T>]) -> Option<String> {
    if !loss.to_f64().is_finite() {
        Some(format!("the loss is {loss}"))
    } else if !grads
        .iter()
        .all(|w| w.iter().all(|v| v.to_f64().is_finite()))
    {
        Some("a gradient is not finite".to_string())
    } else {
        None
    }
}

/// One optimizer step on rows `start..end` with its Dropout seed: the batch's loss, or what
/// was not finite (the weights then untouched).
pub(super) type BatchStep<'a> =
    dyn FnMut(&mut Optimizer, (usize, usize), u64) -> Result<std::result::Result<f64, String>> + 'a;

/// Keras's `fit` loop over `n` rows with `shuffle=False`: the batches in order, `step` on
/// each (one Dropout stream per optimizer step), the per-epoch mean loss; a step that was
/// not finite stops it with [`LstmError::TrainingDiverged`].
pub(super) fn fit_batches(
    n: usize,
    options: &FitOptions,
    optimizer: &mut Optimizer,
    step: &mut BatchStep<'_>,
) -> Result<History> {
    if options.batch_size == 0 {
        return Err(LstmError::invalid("batch_size", "must be at least 1"));
    }
    let mut history = History {
        epoch_loss: Vec::new(),
    };
    for epoch in 1..=options.epochs {
        let (mut total, mut count) = (0.0f64, 0usize);
        for (k, start) in (0..n).step_by(options.batch_size).enumerate() {
            let end = (start + options.batch_size).min(n);
            // one Dropout stream per optimizer step
            let seed =
                SplitMix(options.seed ^ optimizer.iterations().wrapping_mul(0xA076_1D64_78BD_642F))
                    .next_u64();
            let loss = step(optimizer, (start, end), seed)?.map_err(|what| {
                LstmError::TrainingDiverged {
                    epoch,
                    step: k + 1,
                    rows: format!("{start}..{end}"),
                    what,
                }
            })?;
            total += loss * (end - start) as f64;
            count += end - start;
            log::debug!(
                "epoch {epoch}/{}, step {}: loss {loss:.6} (running mean {:.6})",
                options.epochs,
                k + 1,
                total / count as f64
            );
        }
        let mean = if count == 0 {
            0.0
        } else {
            total / count as f64
        };
        log::info!("epoch {epoch}/{}: loss {mean:.6}", options.epochs);
        history.epoch_loss.push(mean);
    }
    Ok(history)
}
