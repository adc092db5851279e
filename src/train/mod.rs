//! Training on the CPU, with Keras's gradients, losses and optimizers: backpropagation
//! through time for `LSTM`, `GRU` (both forms) and `SimpleRNN` ([`lstm_gradients`]), a
//! trainable chain of `Masking`, recurrent and `Dense` layers ([`Sequential`], built from a loaded [`KerasModel`]) with
//! [`Sequential::gradients`] (the loss and its gradient w.r.t. every weight and the input, as
//! `tf.GradientTape` gives them) and [`Sequential::fit`] (Keras's `model.fit` with
//! `shuffle=False`: the batches in order, one optimizer step each, the per-epoch mean loss).
//! Generic over f32 and f64.
//!
//! The trained weights are written back as Keras 3 files ([`Sequential::weights_h5`],
//! [`Sequential::keras_file`]).
//!
//! Not yet here: the other graph layers (Embedding, Conv1D, attention, ...), Dropout in
//! training mode, stateful layers, `merge_mode=None` and returned states in a chain, the GPU
//! path.
//!
//! ```no_run
//! use lstm_wgpu::model::KerasModel;
//! use lstm_wgpu::train::{FitOptions, Loss, Optimizer, Sequential};
//! # fn main() -> lstm_wgpu::Result<()> {
//! let model = KerasModel::load(std::path::Path::new("model.keras"))?;
//! let mut net = Sequential::<f32>::from_model(&model)?;
//! let x = ndarray::Array3::<f32>::zeros((32, 10, 3));
//! let y = ndarray::Array2::<f32>::zeros((32, 1)).into_dyn();
//! let mut opt = Optimizer::adam(1e-3);
//! let history = net.fit(x.view(), y.view(), &FitOptions::new(Loss::MeanSquaredError, 8, 5), &mut opt)?;
//! println!("{:?}", history.epoch_loss);
//! # Ok(()) }
//! ```

mod activation;
mod h5write;
mod loss;
mod optim;
mod recurrent;
mod save;

pub use activation::derivative;
pub use loss::{Loss, LossGrad};
pub use optim::{Optimizer, Rule};
pub use recurrent::{lstm_gradients, LstmCall, LstmCotangents, LstmGrads};

use crate::config::LstmConfig;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::model::{DenseActivation, KerasModel, ModelLayer};
use crate::network::Network;
use crate::weights::LstmWeights;
use ndarray::{Array1, Array2, Array3, ArrayD, ArrayView3, ArrayViewD, Axis, Ix2, IxDyn};

/// One trainable layer.
// A model holds a handful of layers; the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum TrainLayer<T> {
    /// `Masking(mask_value)`: masks the timesteps whose features all equal it and zeroes
    /// them (`x · mask`, as Keras).
    Masking {
        /// The padding value.
        mask_value: T,
    },
    /// `LSTM`, `GRU` or `SimpleRNN`.
    Recurrent {
        /// Its configuration.
        config: LstmConfig,
        /// Its weights.
        weights: LstmWeights<T>,
    },
    /// `Bidirectional` around one of them (merged by concat, sum, mul or ave): the forward
    /// and backward directions' configurations and weights.
    Bidirectional {
        /// The forward direction.
        forward: (LstmConfig, LstmWeights<T>),
        /// The backward direction (processes the sequence last step first).
        backward: (LstmConfig, LstmWeights<T>),
        /// How the outputs merge.
        merge: crate::config::MergeMode,
    },
    /// `Dense` on the last axis.
    Dense {
        /// `[in, units]`.
        kernel: Array2<T>,
        /// `[units]`.
        bias: Option<Array1<T>>,
        /// Its activation.
        activation: DenseActivation,
    },
}

/// A chain of trainable layers (`Sequential` of Masking, LSTM/GRU/SimpleRNN, Bidirectional
/// and Dense).
#[derive(Debug, Clone)]
pub struct Sequential<T> {
    /// The layers with their Keras names.
    pub layers: Vec<(String, TrainLayer<T>)>,
}

/// How [`Sequential::fit`] runs.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// The loss.
    pub loss: Loss,
    /// Rows per step (the last batch of an epoch may be smaller, as in Keras).
    pub batch_size: usize,
    /// Passes over the data.
    pub epochs: usize,
}

impl FitOptions {
    /// `loss`, `batch_size`, `epochs`.
    pub fn new(loss: Loss, batch_size: usize, epochs: usize) -> Self {
        FitOptions {
            loss,
            batch_size,
            epochs,
        }
    }
}

/// What [`Sequential::fit`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Per epoch, the mean of its steps' losses weighted by their batch sizes (Keras's
    /// `history["loss"]`).
    pub epoch_loss: Vec<f64>,
}

/// The loss of a batch and its gradients.
#[derive(Debug, Clone)]
pub struct Gradients<T> {
    /// The loss.
    pub loss: T,
    /// dL/dw for every weight, in Keras's `trainable_weights` order.
    pub weights: Vec<ArrayD<T>>,
    /// dL/dx.
    pub x: Array3<T>,
}

/// What one layer's forward pass keeps for its backward pass.
enum Cache<T> {
    Masking(Array2<bool>),
    Lstm(Box<recurrent::LstmTape<T>>, Array3<T>),
    /// Both directions' tapes, the input, both outputs (the backward one in input order).
    Bidi(Box<[recurrent::LstmTape<T>; 2]>, Array3<T>, [ArrayD<T>; 2]),
    Dense(ArrayD<T>, ArrayD<T>),
}

impl<T: Element> Sequential<T> {
    /// The chain of `model` (a `Sequential` or functional chain of Masking, LSTM and Dense
    /// layers, [`KerasModel::layers`]) with its weights in `T`.
    pub fn from_model(model: &KerasModel) -> Result<Self> {
        if let Some(why) = model.chain_error() {
            return Err(LstmError::invalid(
                "model",
                format!("not trainable yet: {why}"),
            ));
        }
        refuse_training_randomness(model.config())?;
        let mut layers = Vec::new();
        for (name, layer) in model.layers() {
            let l = match layer {
                ModelLayer::Masking { mask_value } => TrainLayer::Masking {
                    mask_value: T::from_f64(f64::from(*mask_value)),
                },
                ModelLayer::Recurrent(Network::Lstm(l)) => {
                    let (config, weights) = direction(l, name)?;
                    TrainLayer::Recurrent { config, weights }
                }
                ModelLayer::Recurrent(Network::Bidirectional(bi)) => {
                    if bi.merge_mode() == crate::config::MergeMode::None
                        || bi.forward_layer().config().return_state
                    {
                        return Err(LstmError::unsupported(
                            "layer",
                            format!("{name} (a Bidirectional layer with two outputs or its states) in training"),
                        ));
                    }
                    TrainLayer::Bidirectional {
                        forward: direction(bi.forward_layer(), name)?,
                        backward: direction(bi.backward_layer(), name)?,
                        merge: bi.merge_mode(),
                    }
                }
                ModelLayer::Recurrent(_) => {
                    return Err(LstmError::unsupported(
                        "layer",
                        format!("{name} (a stack inside one layer) in training"),
                    ))
                }
                ModelLayer::Dense {
                    kernel,
                    bias,
                    activation,
                } => TrainLayer::Dense {
                    kernel: kernel.mapv(|v| T::from_f64(f64::from(v))),
                    bias: bias.as_ref().map(|b| b.mapv(|v| T::from_f64(f64::from(v)))),
                    activation: *activation,
                },
            };
            layers.push((name.clone(), l));
        }
        Ok(Sequential { layers })
    }

    /// Every weight in Keras's `get_weights()` order.
    pub fn weights(&self) -> Vec<ArrayD<T>> {
        let mut out = Vec::new();
        for (_, l) in &self.layers {
            match l {
                TrainLayer::Masking { .. } => {}
                TrainLayer::Recurrent { weights, .. } => push_weights(&mut out, weights),
                TrainLayer::Bidirectional {
                    forward, backward, ..
                } => {
                    push_weights(&mut out, &forward.1);
                    push_weights(&mut out, &backward.1);
                }
                TrainLayer::Dense { kernel, bias, .. } => {
                    out.push(kernel.clone().into_dyn());
                    out.extend(bias.clone().map(|b| b.into_dyn()));
                }
            }
        }
        out
    }

    /// Replaces every weight (the order and shapes of [`Sequential::weights`]).
    pub fn set_weights(&mut self, new: &[ArrayD<T>]) -> Result<()> {
        let old = self.weights();
        if old.len() != new.len() {
            return Err(LstmError::invalid(
                "weights",
                format!("expected {} arrays, got {}", old.len(), new.len()),
            ));
        }
        for (k, (o, n)) in old.iter().zip(new).enumerate() {
            if o.shape() != n.shape() {
                return Err(LstmError::shape(
                    format!("weight {k}"),
                    o.shape(),
                    n.shape(),
                ));
            }
        }
        let mut it = new.iter();
        let two = |it: &mut std::slice::Iter<'_, ArrayD<T>>| {
            it.next()
                .expect("counted")
                .clone()
                .into_dimensionality::<Ix2>()
                .expect("checked")
        };
        for (_, l) in &mut self.layers {
            match l {
                TrainLayer::Masking { .. } => {}
                TrainLayer::Recurrent { weights, .. } => take_weights(&mut it, weights),
                TrainLayer::Bidirectional {
                    forward, backward, ..
                } => {
                    take_weights(&mut it, &mut forward.1);
                    take_weights(&mut it, &mut backward.1);
                }
                TrainLayer::Dense { kernel, bias, .. } => {
                    *kernel = two(&mut it);
                    if bias.is_some() {
                        *bias = Some(it.next().expect("counted").iter().copied().collect());
                    }
                }
            }
        }
        Ok(())
    }

    /// The forward pass: the prediction, its Keras mask, the logits of a sigmoid or softmax
    /// output, and the caches.
    #[allow(clippy::type_complexity)]
    fn forward(
        &self,
        x: ArrayView3<'_, T>,
    ) -> Result<(
        ArrayD<T>,
        Option<ArrayD<bool>>,
        Option<ArrayD<T>>,
        Vec<Cache<T>>,
    )> {
        let mut h: ArrayD<T> = x.to_owned().into_dyn();
        let mut mask: Option<Array2<bool>> = None;
        let mut caches = Vec::new();
        let mut logits = None;
        for (name, l) in &self.layers {
            logits = None;
            match l {
                TrainLayer::Masking { mask_value } => {
                    let x3 = h
                        .view()
                        .into_dimensionality::<ndarray::Ix3>()
                        .map_err(|_| {
                            LstmError::shape(
                                format!("input of layer {name}"),
                                &[0, 0, 0],
                                h.shape(),
                            )
                        })?;
                    let m = x3.map_axis(Axis(2), |row| row.iter().any(|v| v != mask_value));
                    let mut y = x3.to_owned();
                    for ((b, t), &keep) in m.indexed_iter() {
                        if !keep {
                            y.slice_mut(ndarray::s![b, t, ..]).fill(T::zero());
                        }
                    }
                    h = y.into_dyn();
                    mask = Some(m.clone());
                    caches.push(Cache::Masking(m));
                }
                TrainLayer::Recurrent { config, weights } => {
                    let x3 = h
                        .view()
                        .into_dimensionality::<ndarray::Ix3>()
                        .map_err(|_| {
                            LstmError::shape(
                                format!("input of layer {name}"),
                                &[0, 0, 0],
                                h.shape(),
                            )
                        })?;
                    let (out, tape) = recurrent::forward(
                        (config, weights),
                        x3,
                        mask.as_ref().map(|m| m.view()),
                        None,
                    )?;
                    caches.push(Cache::Lstm(Box::new(tape), x3.to_owned()));
                    if !config.return_sequences {
                        mask = None;
                    }
                    h = out.output;
                }
                TrainLayer::Bidirectional {
                    forward,
                    backward,
                    merge,
                } => {
                    let x3 = h
                        .view()
                        .into_dimensionality::<ndarray::Ix3>()
                        .map_err(|_| {
                            LstmError::shape(
                                format!("input of layer {name}"),
                                &[0, 0, 0],
                                h.shape(),
                            )
                        })?;
                    let m = mask.as_ref().map(|m| m.view());
                    let (yf, tf) = recurrent::forward((&forward.0, &forward.1), x3, m, None)?;
                    let (yb, tb) = recurrent::forward((&backward.0, &backward.1), x3, m, None)?;
                    let seqs = forward.0.return_sequences;
                    let mut yb = yb.output;
                    if seqs {
                        yb.invert_axis(Axis(1));
                        yb = yb.as_standard_layout().into_owned();
                    }
                    let yf = yf.output;
                    let merged = crate::network::merge_directions(
                        *merge,
                        false,
                        vec![yf.clone()],
                        vec![yb.clone()],
                    )
                    .remove(0);
                    caches.push(Cache::Bidi(Box::new([tf, tb]), x3.to_owned(), [yf, yb]));
                    h = merged;
                    if !seqs {
                        mask = None;
                    }
                }
                TrainLayer::Dense {
                    kernel,
                    bias,
                    activation,
                } => {
                    let shape = h.shape().to_vec();
                    let (&width, lead) = shape.split_last().ok_or_else(|| {
                        LstmError::shape(
                            format!("input of layer {name}"),
                            &[0, kernel.nrows()],
                            &shape,
                        )
                    })?;
                    if width != kernel.nrows() {
                        let mut want = lead.to_vec();
                        want.push(kernel.nrows());
                        return Err(LstmError::shape(
                            format!("input of layer {name}"),
                            &want,
                            &shape,
                        ));
                    }
                    let rows: usize = lead.iter().product();
                    let x2 = h
                        .as_standard_layout()
                        .into_owned()
                        .into_shape_with_order((rows, width))
                        .expect("rows x features");
                    let mut z = x2.dot(kernel);
                    if let Some(b) = bias {
                        z += b;
                    }
                    let mut out_shape = lead.to_vec();
                    out_shape.push(kernel.ncols());
                    let z = z
                        .into_shape_with_order(IxDyn(&out_shape))
                        .expect("the shape");
                    let y = dense_activate(*activation, &z);
                    if matches!(
                        activation,
                        DenseActivation::Softmax
                            | DenseActivation::Elementwise(crate::Activation::Sigmoid)
                    ) {
                        logits = Some(z.clone());
                    }
                    caches.push(Cache::Dense(x2.into_dyn(), z));
                    h = y;
                }
            }
        }
        Ok((h, mask.map(|m| m.into_dyn()), logits, caches))
    }

    /// The model's output on `x [B, T, I]`.
    pub fn predict(&self, x: ArrayView3<'_, T>) -> Result<ArrayD<T>> {
        Ok(self.forward(x)?.0)
    }

    /// The loss of the batch `(x, y)` (Keras's loss object on the model's output, its mask
    /// included) and its gradients w.r.t. every weight and `x`.
    pub fn gradients(
        &self,
        x: ArrayView3<'_, T>,
        y: ArrayViewD<'_, T>,
        loss: Loss,
    ) -> Result<Gradients<T>> {
        let (pred, mask, logits, caches) = self.forward(x)?;
        let lg = loss.evaluate(
            pred.view(),
            logits.as_ref().map(|l| l.view()),
            y,
            mask.as_ref().map(|m| m.view()),
        )?;
        let mut d = lg.grad;
        let mut skip_activation = lg.wrt_logits;
        let mut grads: Vec<Vec<ArrayD<T>>> = Vec::new();
        for ((name, l), cache) in self.layers.iter().zip(caches).rev() {
            match (l, cache) {
                (TrainLayer::Masking { .. }, Cache::Masking(m)) => {
                    let mut dx = d
                        .into_dimensionality::<ndarray::Ix3>()
                        .expect("the input's rank");
                    for ((b, t), &keep) in m.indexed_iter() {
                        if !keep {
                            dx.slice_mut(ndarray::s![b, t, ..]).fill(T::zero());
                        }
                    }
                    d = dx.into_dyn();
                }
                (TrainLayer::Recurrent { config, weights }, Cache::Lstm(tape, x3)) => {
                    let cot = LstmCotangents {
                        output: d,
                        h: None,
                        c: None,
                    };
                    let g = recurrent::backward((config, weights), x3.view(), &tape, &cot)?;
                    let n = g.kernel.ncols();
                    let mut w = vec![g.kernel.into_dyn(), g.recurrent_kernel.into_dyn()];
                    w.extend(g.bias.map(|b| keras_bias(b, n)));
                    grads.push(w);
                    d = g.x.into_dyn();
                }
                (
                    TrainLayer::Bidirectional {
                        forward,
                        backward,
                        merge,
                    },
                    Cache::Bidi(tapes, x3, [yf, yb]),
                ) => {
                    use crate::config::MergeMode;
                    let hf = forward.0.units;
                    let last = Axis(d.ndim() - 1);
                    let half = T::from_f64(0.5);
                    let (df, mut db) = match merge {
                        MergeMode::Concat => (
                            d.slice_axis(last, (..hf).into()).to_owned(),
                            d.slice_axis(last, (hf..).into()).to_owned(),
                        ),
                        MergeMode::Sum => (d.clone(), d),
                        MergeMode::Ave => (d.mapv(|v| v * half), d.mapv(|v| v * half)),
                        MergeMode::Mul => (&d * &yb, &d * &yf),
                        MergeMode::None => unreachable!("refused by from_model"),
                    };
                    if forward.0.return_sequences {
                        db.invert_axis(Axis(1));
                        db = db.as_standard_layout().into_owned();
                    }
                    let [tf, tb] = *tapes;
                    let mut w = Vec::new();
                    let mut dx = Array3::<T>::zeros(x3.raw_dim());
                    for ((cfg, weights), tape, d) in [(forward, &tf, df), (backward, &tb, db)] {
                        let cot = LstmCotangents {
                            output: d,
                            h: None,
                            c: None,
                        };
                        let g = recurrent::backward((cfg, weights), x3.view(), tape, &cot)?;
                        let n = g.kernel.ncols();
                        w.extend([g.kernel.into_dyn(), g.recurrent_kernel.into_dyn()]);
                        w.extend(g.bias.map(|b| keras_bias(b, n)));
                        dx += &g.x;
                    }
                    grads.push(w);
                    d = dx.into_dyn();
                }
                (
                    TrainLayer::Dense {
                        kernel,
                        bias,
                        activation,
                    },
                    Cache::Dense(x2, z),
                ) => {
                    let dz = if skip_activation {
                        d
                    } else {
                        dense_activation_backward(*activation, &z, &d)
                    };
                    let units = kernel.ncols();
                    let rows = dz.len() / units.max(1);
                    let dz2 = dz
                        .as_standard_layout()
                        .into_owned()
                        .into_shape_with_order((rows, units))
                        .expect("rows x units");
                    let x2 = x2.into_dimensionality::<Ix2>().expect("rows x features");
                    let mut w = vec![x2.t().dot(&dz2).into_dyn()];
                    if bias.is_some() {
                        w.push(dz2.sum_axis(Axis(0)).into_dyn());
                    }
                    grads.push(w);
                    let mut shape = z.shape().to_vec();
                    *shape.last_mut().expect("a shape") = kernel.nrows();
                    d = dz2
                        .dot(&kernel.t())
                        .as_standard_layout()
                        .into_owned()
                        .into_shape_with_order(IxDyn(&shape))
                        .expect("the input's shape");
                }
                _ => {
                    return Err(LstmError::invalid(
                        format!("layer {name}"),
                        "cache mismatch",
                    ));
                }
            }
            skip_activation = false;
        }
        let x = d
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|_| LstmError::invalid("input", "not 3-D"))?;
        Ok(Gradients {
            loss: lg.value,
            weights: grads.into_iter().rev().flatten().collect(),
            x,
        })
    }

    /// Trains on `x [N, T, I]` and targets `y` (leading axis N) as Keras's
    /// `model.fit(x, y, batch_size, epochs, shuffle=False)` does: the batches in order, the
    /// loss and its gradients for each, one step of `optimizer`. A loss or gradient that is
    /// not finite stops it with [`LstmError::TrainingDiverged`] naming the epoch, step and
    /// rows; the weights are then those from before that step. Logs each epoch's loss
    /// (`log::info!`) and each step's with the running mean (`log::debug!`), Keras's
    /// progress line.
    pub fn fit(
        &mut self,
        x: ArrayView3<'_, T>,
        y: ArrayViewD<'_, T>,
        options: &FitOptions,
        optimizer: &mut Optimizer,
    ) -> Result<History> {
        let n = x.dim().0;
        if y.shape().first() != Some(&n) {
            return Err(LstmError::shape(
                "targets",
                &[n],
                &y.shape()[..y.ndim().min(1)],
            ));
        }
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
                let xb = x.slice(ndarray::s![start..end, .., ..]);
                let yb = y.slice_axis(Axis(0), (start..end).into());
                let g = self.gradients(xb, yb, options.loss)?;
                let finite_grads = g
                    .weights
                    .iter()
                    .all(|w| w.iter().all(|v| v.to_f64().is_finite()));
                if !g.loss.to_f64().is_finite() || !finite_grads {
                    let what = if g.loss.to_f64().is_finite() {
                        "a gradient is not finite".to_string()
                    } else {
                        format!("the loss is {}", g.loss)
                    };
                    return Err(LstmError::TrainingDiverged {
                        epoch,
                        step: k + 1,
                        rows: format!("{start}..{end}"),
                        what,
                    });
                }
                let mut w = self.weights();
                optimizer.apply(&mut w, &g.weights)?;
                self.set_weights(&w)?;
                total += g.loss.to_f64() * (end - start) as f64;
                count += end - start;
                log::debug!(
                    "epoch {epoch}/{}, step {}: loss {:.6} (running mean {:.6})",
                    options.epochs,
                    k + 1,
                    g.loss,
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
}

/// Keras applies dropout and noise in `fit`; training without them would train another
/// model, so a config with any (a Dropout-family layer with a rate, a recurrent layer's
/// `dropout` or `recurrent_dropout`) is refused, naming the layer and the key.
fn refuse_training_randomness(config: &serde_json::Value) -> Result<()> {
    fn walk(v: &serde_json::Value) -> Result<()> {
        match v {
            serde_json::Value::Object(o) => {
                let name = o
                    .get("config")
                    .and_then(|c| c.get("name"))
                    .and_then(serde_json::Value::as_str);
                if let (Some(cfg), Some(name)) = (o.get("config"), name) {
                    for key in ["rate", "dropout", "recurrent_dropout", "stddev"] {
                        if let Some(r) = cfg.get(key).and_then(serde_json::Value::as_f64) {
                            if r > 0.0 {
                                return Err(LstmError::unsupported(
                                    key,
                                    format!(
                                        "{r} on layer {name} in training (dropout and noise in training mode are not built; set it to 0 to train this model)"
                                    ),
                                ));
                            }
                        }
                    }
                }
                o.values().try_for_each(walk)
            }
            serde_json::Value::Array(a) => a.iter().try_for_each(walk),
            _ => Ok(()),
        }
    }
    walk(config)
}

/// One recurrent direction of a loaded layer, its weights in `T` (stateful layers refused).
fn direction<T: Element>(
    l: &crate::cpu::Lstm<f32>,
    name: &str,
) -> Result<(LstmConfig, LstmWeights<T>)> {
    let cfg = l.config().clone();
    if cfg.stateful {
        return Err(LstmError::unsupported(
            "stateful",
            format!("true on layer {name} in training"),
        ));
    }
    let w = l.weights();
    let k = |a: &Array2<f32>| a.mapv(|v| T::from_f64(f64::from(v)));
    let weights = LstmWeights::new(
        &cfg,
        w.kernel.nrows(),
        k(&w.kernel),
        k(&w.recurrent_kernel),
        w.bias
            .as_ref()
            .map(|b| b.mapv(|v| T::from_f64(f64::from(v)))),
    )?;
    Ok((cfg, weights))
}

/// A direction's weights in Keras's order and shapes.
fn push_weights<T: Element>(out: &mut Vec<ArrayD<T>>, w: &LstmWeights<T>) {
    out.push(w.kernel.clone().into_dyn());
    out.push(w.recurrent_kernel.clone().into_dyn());
    out.extend(w.bias.clone().map(|b| keras_bias(b, w.kernel.ncols())));
}

/// A direction's weights from `it` (Keras's order; shapes checked by the caller).
fn take_weights<T: Element>(it: &mut std::slice::Iter<'_, ArrayD<T>>, w: &mut LstmWeights<T>) {
    let mut two = || {
        it.next()
            .expect("counted")
            .clone()
            .into_dimensionality::<Ix2>()
            .expect("checked")
    };
    w.kernel = two();
    w.recurrent_kernel = two();
    if w.bias.is_some() {
        w.bias = Some(it.next().expect("counted").iter().copied().collect());
    }
}

/// A recurrent bias in Keras's shape: `[G·H]`, or `[2, G·H]` for a GRU with reset_after
/// (the input bias, then the recurrent one).
fn keras_bias<T: Element>(b: Array1<T>, n: usize) -> ArrayD<T> {
    if b.len() == 2 * n {
        b.into_shape_with_order(IxDyn(&[2, n])).expect("two halves")
    } else {
        b.into_dyn()
    }
}

/// A Dense activation on `z` (softmax over the last axis).
fn dense_activate<T: Element>(a: DenseActivation, z: &ArrayD<T>) -> ArrayD<T> {
    match a {
        DenseActivation::Elementwise(f) => z.mapv(|v| f.apply(v)),
        DenseActivation::Softmax => {
            let mut y = z.clone();
            for mut row in y.lanes_mut(Axis(z.ndim() - 1)) {
                let max = row
                    .iter()
                    .fold(T::from_f64(f64::NEG_INFINITY), |m, &v| m.elem_max(v));
                let mut sum = T::zero();
                row.mapv_inplace(|v| {
                    let e = (v - max).exp();
                    sum += e;
                    e
                });
                row.mapv_inplace(|v| v / sum);
            }
            y
        }
    }
}

/// dL/dz from dL/dy through a Dense activation at `z`.
fn dense_activation_backward<T: Element>(
    a: DenseActivation,
    z: &ArrayD<T>,
    d: &ArrayD<T>,
) -> ArrayD<T> {
    match a {
        DenseActivation::Elementwise(f) => {
            let mut out = d.clone();
            ndarray::Zip::from(&mut out)
                .and(z)
                .for_each(|o, &z| *o = *o * derivative(f, z));
            out
        }
        DenseActivation::Softmax => {
            let y = dense_activate(a, z);
            let mut out = d.clone();
            let ax = Axis(z.ndim() - 1);
            for (mut o, s) in out.lanes_mut(ax).into_iter().zip(y.lanes(ax)) {
                let dot = o
                    .iter()
                    .zip(s.iter())
                    .fold(T::zero(), |acc, (&g, &s)| acc + g * s);
                ndarray::Zip::from(&mut o)
                    .and(&s)
                    .for_each(|g, &s| *g = s * (*g - dot));
            }
            out
        }
    }
}
