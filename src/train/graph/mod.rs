//! Training a functional graph ([`Functional`]): several inputs and outputs, layers called on
//! other layers' outputs (each call with its own tape, a shared layer's gradients summed over
//! its calls), `initial_state` from other tensors (its cotangent flows back to them),
//! `return_state`, explicit `mask` tensors (the op layers of a functional `Masking`), merges
//! and attention ([`super::layers::MergeOp`]), a loss per output with its weight. The
//! single-input layers run the chain's own per-layer passes (`chain::layer_forward` and
//! `layer_backward`).

mod backward;
mod build;

use super::activation::dense_activation_backward;
use super::chain::{layer_backward, layer_forward, layer_seed, state_after, Cache};
use super::constrain::{layer_constraints, Constraint};
use super::layers::{MergeOp, OpCache, MERGE_CLASSES};
use super::load::{refuse_training_randomness, set_states, train_layer};
use super::path::{CpuPath, CpuRecompute, RecurrentPath};
use super::regularize::{
    activity_regularizer, inner_activity_regularizers, layer_regularizers, Regularizer,
};
use super::save::{saved_of, Saved};
use super::sequential::{fit_batches, not_finite};
use super::{FitOptions, History, Loss, Optimizer, TrainLayer};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::graph::{CallSpec, TensorRef};
use crate::model::KerasModel;
use ndarray::{Array2, ArrayD, ArrayViewD, ArrayViewMutD, Axis, Ix2};
use serde_json::Value;

/// A layer of a functional graph.
// (a model holds a handful of these: the size of the `One` variant costs nothing)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum GraphLayer<T> {
    /// A layer of one input (a recurrent one also reads its `initial_state`).
    One(TrainLayer<T>),
    /// A layer of several inputs: a merge, an attention layer, an op layer.
    Many(Box<dyn MergeOp<T>>),
}

impl<T: Element> GraphLayer<T> {
    /// Its trainable weights in Keras's order.
    pub fn weights(&self) -> Vec<ArrayD<T>> {
        match self {
            GraphLayer::One(l) => l.weights(),
            GraphLayer::Many(op) => op.weights(),
        }
    }

    /// The same as views.
    pub fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        match self {
            GraphLayer::One(l) => l.weights_mut(),
            GraphLayer::Many(op) => op.weights_mut(),
        }
    }

    /// Its non-trainable variables.
    pub fn state(&self) -> Vec<ArrayD<T>> {
        match self {
            GraphLayer::One(l) => l.state(),
            GraphLayer::Many(_) => Vec::new(),
        }
    }
}

/// Where a tensor comes from: model input `k`, or output `.1` of call `.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Src {
    Input(usize),
    Out(usize, usize),
}

/// One layer call.
#[derive(Debug, Clone)]
struct Call {
    /// Index into `Functional::layers`.
    layer: usize,
    inputs: Vec<Src>,
    states: Vec<Src>,
    mask: Option<Src>,
    scalars: Vec<f64>,
}

/// The loss of each output of a functional model and its weight, as Keras's
/// `compile(loss=[...], loss_weights=[...])`: the total is `Σ weight · loss` over the
/// outputs that have one.
#[derive(Debug, Clone, PartialEq)]
pub struct Losses {
    /// Per output: its loss and weight, or None (no loss: its target is not read).
    pub per_output: Vec<Option<(Loss, f64)>>,
}

impl Losses {
    /// `losses[k]` on output `k` with weight 1 (None: that output has no loss).
    ///
    /// ```
    /// use lstm_wgpu::train::{Loss, Losses};
    /// let l = Losses::new(vec![Some(Loss::MeanSquaredError), None]).weights(&[0.5, 1.0]);
    /// assert_eq!(l.per_output[0], Some((Loss::MeanSquaredError, 0.5)));
    /// ```
    pub fn new(losses: Vec<Option<Loss>>) -> Self {
        Losses {
            per_output: losses.into_iter().map(|l| l.map(|l| (l, 1.0))).collect(),
        }
    }

    /// `loss` on each of `outputs` outputs (Keras's one loss for a model of several).
    pub fn same(loss: Loss, outputs: usize) -> Self {
        Losses::new(vec![Some(loss); outputs])
    }

    /// Sets the weights (`loss_weights`; one per output, those of outputs without a loss
    /// ignored).
    pub fn weights(mut self, weights: &[f64]) -> Self {
        for (l, &w) in self.per_output.iter_mut().zip(weights) {
            if let Some((_, lw)) = l {
                *lw = w;
            }
        }
        self
    }
}

/// The loss of a batch of a functional model and its gradients.
#[derive(Debug, Clone)]
pub struct GraphGradients<T> {
    /// The total loss.
    pub loss: T,
    /// dL/dw for every weight, in Keras's `trainable_weights` order.
    pub weights: Vec<ArrayD<T>>,
    /// dL/d(input k), each the shape of its input (zeros for token ids).
    pub inputs: Vec<ArrayD<T>>,
    /// As [`super::Gradients::sparse_squares`].
    pub sparse_squares: Vec<Option<ArrayD<T>>>,
}

/// A tensor of the graph: its values, its Keras mask and, for a sigmoid or softmax output,
/// its logits.
struct Tensor<T> {
    data: ArrayD<T>,
    mask: Option<Array2<bool>>,
    logits: Option<ArrayD<T>>,
}

/// What a call's forward pass keeps.
enum CallCache<T: Element> {
    One(Box<Cache<T>>),
    Many(OpCache),
}

/// A trainable Keras functional model: its layers (config order, which is Keras's
/// `trainable_weights` order), the calls of them in an order where every tensor exists before
/// it is read, its inputs and outputs. Built from a loaded model ([`Functional::from_model`]:
/// any graph of the layers [`super::Sequential`] trains, merges, attention and the op layers
/// of a functional `Masking`, a `Sequential` model included); trained on the CPU, generic
/// over f32 and f64.
///
/// ```no_run
/// use lstm_wgpu::model::KerasModel;
/// use lstm_wgpu::train::{FitOptions, Functional, Loss, Losses, Optimizer};
/// # fn main() -> lstm_wgpu::Result<()> {
/// let model = KerasModel::load(std::path::Path::new("encoder_decoder.keras"))?;
/// let mut net = Functional::<f32>::from_model(&model)?;
/// let (enc, dec) = (ndarray::Array3::<f32>::zeros((32, 8, 4)), ndarray::Array3::<f32>::zeros((32, 6, 3)));
/// let y = ndarray::Array3::<f32>::zeros((32, 6, 3)).into_dyn();
/// let losses = Losses::new(vec![Some(Loss::CategoricalCrossentropy { from_logits: false })]);
/// let mut opt = Optimizer::adam(1e-3);
/// let history = net.fit(
///     &[enc.view().into_dyn(), dec.view().into_dyn()],
///     &[y.view()],
///     &losses,
///     &FitOptions::new(Loss::MeanSquaredError, 8, 5),
///     &mut opt,
/// )?;
/// println!("{:?}", history.epoch_loss);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Functional<T> {
    /// The layers with their Keras names, in config order.
    pub layers: Vec<(String, GraphLayer<T>)>,
    /// Per layer, the regularizer of each of its weights (`kernel_regularizer`, ...).
    regularizers: Vec<Vec<Option<Regularizer>>>,
    /// Per layer, the constraint of each of its weights (`kernel_constraint`, ...).
    constraints: Vec<Vec<Option<Constraint>>>,
    /// Per layer, whether it is frozen (`trainable: false`).
    frozen: Vec<bool>,
    /// Per layer, its activity regularizer (on every output of each call).
    activity: Vec<Option<Regularizer>>,
    /// Per layer, a Bidirectional's forward and backward layers' activity regularizers (on
    /// each direction's output).
    inner_activity: Vec<[Option<Regularizer>; 2]>,
    calls: Vec<Call>,
    inputs: Vec<String>,
    outputs: Vec<Src>,
}

impl<T: Element> Functional<T> {
    /// The model's input names, in order.
    pub fn input_names(&self) -> &[String] {
        &self.inputs
    }

    /// How many outputs the model gives.
    pub fn output_count(&self) -> usize {
        self.outputs.len()
    }

    /// The layer (index into `layers`) of each call, in run order.
    pub(super) fn call_layers(&self) -> Vec<usize> {
        self.calls.iter().map(|c| c.layer).collect()
    }

    /// The forward pass: every call's outputs and caches.
    #[allow(clippy::type_complexity)]
    fn forward(
        &self,
        path: &dyn RecurrentPath<T>,
        xs: &[ArrayViewD<'_, T>],
        training: Option<u64>,
    ) -> Result<(Vec<Tensor<T>>, Vec<Vec<Tensor<T>>>, Vec<CallCache<T>>)> {
        if xs.len() != self.inputs.len() {
            return Err(LstmError::invalid(
                "inputs",
                format!(
                    "the model takes {} inputs ({}), got {}",
                    self.inputs.len(),
                    self.inputs.join(", "),
                    xs.len()
                ),
            ));
        }
        let rows = xs.first().and_then(|x| x.shape().first().copied());
        for (x, name) in xs.iter().zip(&self.inputs) {
            if x.shape().first().copied() != rows {
                return Err(LstmError::shape(
                    format!("input {name}"),
                    &[rows.unwrap_or(0)],
                    &x.shape()[..x.ndim().min(1)],
                ));
            }
        }
        let inputs: Vec<Tensor<T>> = xs
            .iter()
            .map(|x| Tensor {
                data: x.to_owned(),
                mask: None,
                logits: None,
            })
            .collect();
        let mut vals: Vec<Vec<Tensor<T>>> = Vec::with_capacity(self.calls.len());
        let mut caches = Vec::with_capacity(self.calls.len());
        for (k, call) in self.calls.iter().enumerate() {
            let (name, layer) = &self.layers[call.layer];
            let get = |s: Src| -> &Tensor<T> {
                match s {
                    Src::Input(i) => &inputs[i],
                    Src::Out(c, o) => &vals[c][o],
                }
            };
            let explicit = match call.mask {
                Some(m) => Some(bool_mask(&get(m).data, name)?),
                None => None,
            };
            match layer {
                GraphLayer::One(l) => {
                    let [x] = call.inputs.as_slice() else {
                        return Err(LstmError::invalid(
                            format!("layer {name}"),
                            format!("takes one input tensor, got {}", call.inputs.len()),
                        ));
                    };
                    let x = get(*x);
                    let mask = explicit.or_else(|| x.mask.clone());
                    let states: Vec<ndarray::ArrayView2<'_, T>> = call
                        .states
                        .iter()
                        .map(|&s| {
                            get(s)
                                .data
                                .view()
                                .into_dimensionality::<Ix2>()
                                .map_err(|_| {
                                    LstmError::shape(
                                        format!("initial_state of layer {name}"),
                                        &[0, 0],
                                        get(s).data.shape(),
                                    )
                                })
                        })
                        .collect::<Result<_>>()?;
                    let init = match (l, states.as_slice()) {
                        (_, []) => None,
                        (TrainLayer::Recurrent { config, .. }, [h, c])
                            if matches!(config.cell, crate::config::Cell::Lstm) =>
                        {
                            Some((h.view(), c.view()))
                        }
                        (TrainLayer::Recurrent { config, .. }, [h])
                            if !matches!(config.cell, crate::config::Cell::Lstm) =>
                        {
                            Some((h.view(), h.view()))
                        }
                        _ => {
                            return Err(LstmError::invalid(
                                format!("initial_state of layer {name}"),
                                format!("{} tensors do not fit this layer", states.len()),
                            ))
                        }
                    };
                    let out = layer_forward(
                        path,
                        k,
                        (name, l),
                        x.data.clone(),
                        mask,
                        init,
                        self.training_of(call.layer, training),
                    )?;
                    let mut outs = vec![Tensor {
                        data: out.y,
                        mask: out.mask,
                        logits: out.logits,
                    }];
                    outs.extend(out.states.into_iter().map(|s| Tensor {
                        data: s,
                        mask: None,
                        logits: None,
                    }));
                    vals.push(outs);
                    caches.push(CallCache::One(Box::new(out.cache)));
                }
                GraphLayer::Many(op) => {
                    if explicit.is_some() || !call.states.is_empty() {
                        return Err(LstmError::unsupported(
                            format!("keyword argument of layer {name}"),
                            "an explicit mask or initial_state on a layer of several inputs",
                        ));
                    }
                    let xs: Vec<ArrayViewD<'_, T>> =
                        call.inputs.iter().map(|&s| get(s).data.view()).collect();
                    let masks: Vec<Option<&Array2<bool>>> =
                        call.inputs.iter().map(|&s| get(s).mask.as_ref()).collect();
                    // (an op's random draws from its call's own stream, as a layer's)
                    let seed = self
                        .training_of(call.layer, training)
                        .map(|s| layer_seed(s, k));
                    let out = op.forward_in_training(name, &xs, &masks, &call.scalars, seed)?;
                    let mut outs = vec![Tensor {
                        data: out.y,
                        mask: out.mask,
                        logits: None,
                    }];
                    outs.extend(out.extra.into_iter().map(|e| Tensor {
                        data: e,
                        mask: None,
                        logits: None,
                    }));
                    vals.push(outs);
                    caches.push(CallCache::Many(out.cache));
                }
            }
        }
        Ok((inputs, vals, caches))
    }

    /// The model's outputs on `xs` (one array per input, in [`Functional::input_names`]'s
    /// order; token ids held as `T`), in inference mode.
    pub fn predict(&self, xs: &[ArrayViewD<'_, T>]) -> Result<Vec<ArrayD<T>>> {
        self.predict_with(&CpuPath, xs)
    }

    /// [`predict`](Self::predict) with the recurrent calls on `path` (its `at.0` the call's
    /// index: [`Functional::call_layers`] maps it to the layer).
    pub(super) fn predict_with(
        &self,
        path: &dyn RecurrentPath<T>,
        xs: &[ArrayViewD<'_, T>],
    ) -> Result<Vec<ArrayD<T>>> {
        let (inputs, vals, _) = self.forward(path, xs, None)?;
        Ok(self
            .outputs
            .iter()
            .map(|&s| match s {
                Src::Input(i) => inputs[i].data.clone(),
                Src::Out(c, o) => vals[c][o].data.clone(),
            })
            .collect())
    }

    /// The loss of the batch (`xs`, `targets`: one target per output, read where
    /// `losses` gives that output a loss) and its gradients w.r.t. every weight and input, in
    /// inference mode (`tf.GradientTape` over `model(xs, training=False)`).
    pub fn gradients(
        &self,
        xs: &[ArrayViewD<'_, T>],
        targets: &[ArrayViewD<'_, T>],
        losses: &Losses,
    ) -> Result<GraphGradients<T>> {
        Ok(self.gradients_with(&CpuPath, xs, targets, losses, None)?.0)
    }

    /// [`gradients`](Self::gradients) in training mode, the Dropout masks drawn from `seed`.
    pub fn gradients_in_training(
        &self,
        xs: &[ArrayViewD<'_, T>],
        targets: &[ArrayViewD<'_, T>],
        losses: &Losses,
        seed: u64,
    ) -> Result<GraphGradients<T>> {
        Ok(self
            .gradients_with(&CpuPath, xs, targets, losses, Some(seed))?
            .0)
    }

    /// Trains on `xs` (one array per input, leading axis N) and `targets` (one per output,
    /// leading axis N) with the losses `losses` as Keras's `model.fit(xs, ys, batch_size,
    /// epochs, shuffle=False)` does after `compile(loss=..., loss_weights=...)`;
    /// `options.loss` is not read (`losses` gives each output's). A loss or gradient that is
    /// not finite stops it with [`LstmError::TrainingDiverged`], the weights those from
    /// before that step.
    pub fn fit(
        &mut self,
        xs: &[ArrayViewD<'_, T>],
        targets: &[ArrayViewD<'_, T>],
        losses: &Losses,
        options: &FitOptions,
        optimizer: &mut Optimizer,
    ) -> Result<History> {
        let path: &dyn RecurrentPath<T> = match options.recompute {
            Some(steps) => &CpuRecompute(steps),
            None => &CpuPath,
        };
        self.fit_with(path, xs, targets, losses, options, optimizer, &mut |_| {
            Ok(())
        })
    }

    /// [`fit`](Self::fit) with the recurrent calls on `path`; `updated` runs after each
    /// optimizer step (to upload the new weights).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fit_with(
        &mut self,
        path: &dyn RecurrentPath<T>,
        xs: &[ArrayViewD<'_, T>],
        targets: &[ArrayViewD<'_, T>],
        losses: &Losses,
        options: &FitOptions,
        optimizer: &mut Optimizer,
        updated: &mut dyn FnMut(&Self) -> Result<()>,
    ) -> Result<History> {
        let n = xs
            .first()
            .and_then(|x| x.shape().first().copied())
            .ok_or_else(|| LstmError::invalid("inputs", "none given, or a scalar"))?;
        for (o, y) in targets.iter().enumerate() {
            if y.shape().first() != Some(&n) {
                return Err(LstmError::shape(
                    format!("targets of output {o}"),
                    &[n],
                    &y.shape()[..y.ndim().min(1)],
                ));
            }
        }
        fit_batches(
            n,
            options,
            optimizer,
            &mut |optimizer, (start, end), seed| {
                let xb: Vec<ArrayViewD<'_, T>> = xs
                    .iter()
                    .map(|a| a.slice_axis(Axis(0), (start..end).into()))
                    .collect();
                let yb: Vec<ArrayViewD<'_, T>> = targets
                    .iter()
                    .map(|a| a.slice_axis(Axis(0), (start..end).into()))
                    .collect();
                let (g, states) = self.gradients_with(path, &xb, &yb, losses, Some(seed))?;
                if let Some(what) = not_finite(g.loss, &g.weights) {
                    return Ok(Err(what));
                }
                optimizer.apply_views_sparse(
                    &mut self.weights_mut(),
                    &g.weights,
                    &g.sparse_squares,
                )?;
                self.constrain()?;
                for (at, state) in states {
                    if let GraphLayer::One(TrainLayer::Op(op)) = &mut self.layers[at].1 {
                        op.set_state(&state)?;
                    }
                }
                updated(self)?;
                Ok(Ok(g.loss.to_f64()))
            },
        )
    }

    /// Applies each trainable weight's constraint (`kernel_constraint`, ...), as Keras's
    /// optimizer does after its update; a frozen layer's weights are left.
    fn constrain(&mut self) -> Result<()> {
        for (((name, l), cs), &frozen) in self
            .layers
            .iter_mut()
            .zip(&self.constraints)
            .zip(&self.frozen)
        {
            if frozen || cs.iter().all(Option::is_none) {
                continue;
            }
            for (k, (w, c)) in l.weights_mut().into_iter().zip(cs).enumerate() {
                if let Some(c) = c {
                    c.apply(w, &format!("weight {k} of layer {name}"))?;
                }
            }
        }
        Ok(())
    }

    /// Every trainable weight in Keras's `trainable_weights` order (a frozen layer's are
    /// not: they stay as loaded, and are saved as they are).
    pub fn weights(&self) -> Vec<ArrayD<T>> {
        self.layers
            .iter()
            .zip(&self.frozen)
            .filter(|(_, &f)| !f)
            .flat_map(|((_, l), _)| l.weights())
            .collect()
    }

    /// The same as views into the layers.
    pub fn weights_mut(&mut self) -> Vec<ArrayViewMutD<'_, T>> {
        self.layers
            .iter_mut()
            .zip(&self.frozen)
            .filter(|(_, &f)| !f)
            .flat_map(|((_, l), _)| l.weights_mut())
            .collect()
    }

    /// The names of the frozen layers (`trainable: false`: their weights are not trained,
    /// a frozen BatchNormalization runs in inference mode, as Keras's).
    pub fn frozen_layers(&self) -> Vec<&str> {
        self.layers
            .iter()
            .zip(&self.frozen)
            .filter(|(_, &f)| f)
            .map(|((n, _), _)| n.as_str())
            .collect()
    }

    /// The mode layer `at` runs in: a frozen BatchNormalization in inference mode (Keras's
    /// `training and self.trainable`), every other layer in the call's.
    fn training_of(&self, at: usize, training: Option<u64>) -> Option<u64> {
        match &self.layers[at].1 {
            GraphLayer::One(TrainLayer::Op(op))
                if self.frozen[at] && op.class() == "BatchNormalization" =>
            {
                None
            }
            _ => training,
        }
    }

    /// Replaces every weight (the order and shapes of [`Functional::weights`]).
    pub fn set_weights(&mut self, new: &[ArrayD<T>]) -> Result<()> {
        super::load::assign_weights(self.weights_mut(), new)
    }

    /// The non-trainable variables in Keras's `non_trainable_weights` order.
    pub fn state(&self) -> Vec<ArrayD<T>> {
        self.layers.iter().flat_map(|(_, l)| l.state()).collect()
    }

    /// Replaces the non-trainable variables (the order and shapes of
    /// [`Functional::state`]).
    pub fn set_state(&mut self, new: &[ArrayD<T>]) -> Result<()> {
        set_states(
            self.layers.iter_mut().filter_map(|(_, l)| match l {
                GraphLayer::One(l) => Some(l),
                GraphLayer::Many(_) => None,
            }),
            new,
        )
    }

    /// The weights as a Keras 3 `.weights.h5` file for the model whose `config.json` is
    /// `config`.
    pub fn weights_h5(&self, config: &Value) -> Result<Vec<u8>> {
        Ok(super::h5write::file(&self.weights_tree(config)?))
    }

    fn weights_tree(&self, config: &Value) -> Result<super::h5write::Node> {
        let find = |name: &str| {
            self.layers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, l)| match l {
                    GraphLayer::One(l) => saved_of(l),
                    GraphLayer::Many(op) => (op.weights(), Saved::Plain),
                })
        };
        super::save::weights_tree(config, &find, self.layers.len())
    }

    /// A `.keras` file: `original`'s config and metadata with these weights.
    pub fn keras_file(&self, original: &[u8]) -> Result<Vec<u8>> {
        super::save::keras_file::<T>(original, &|config| self.weights_tree(config), None)
    }

    /// [`Functional::keras_file`] compiled: `optimizer` (and its state) and `losses` as the
    /// file's `compile_config` and `optimizer/vars` (the original's metrics and other
    /// compile settings kept), so Keras's `load_model` followed by `fit` goes on where this
    /// training left off; [`Optimizer::from_keras_file`] and
    /// [`Losses::from_compile_config`] read them back.
    ///
    /// ```no_run
    /// use lstm_wgpu::model::KerasModel;
    /// use lstm_wgpu::train::{Functional, Losses, Optimizer};
    /// let bytes = std::fs::read("trained.keras").unwrap();
    /// let model = KerasModel::from_keras_bytes(&bytes).unwrap();
    /// let net = Functional::<f32>::from_model(&model).unwrap();
    /// // the optimizer and losses Keras compiled the model with, its state included
    /// let opt = Optimizer::from_keras_file(&bytes, &net.weights()).unwrap();
    /// let losses = Losses::from_keras_file(&bytes, &model.output_names()).unwrap();
    /// // ... net.fit(&xs, &ys, &losses, &options, &mut opt) ...
    /// std::fs::write("resumed.keras", net.keras_file_compiled(&bytes, &opt, &losses).unwrap())
    ///     .unwrap();
    /// ```
    pub fn keras_file_compiled(
        &self,
        original: &[u8],
        optimizer: &Optimizer,
        losses: &Losses,
    ) -> Result<Vec<u8>> {
        if losses.per_output.len() != self.outputs.len() {
            return Err(LstmError::invalid(
                "losses",
                format!(
                    "{} for a model of {} outputs",
                    losses.per_output.len(),
                    self.outputs.len()
                ),
            ));
        }
        let compiled = super::save::Compiled {
            optimizer,
            losses,
            weights: self.weights(),
        };
        super::save::keras_file(
            original,
            &|config| self.weights_tree(config),
            Some(compiled),
        )
    }
}

/// The mask `[B, T]` a tensor of 0/1 values (an explicit `mask` argument) gives.
fn bool_mask<T: Element>(a: &ArrayD<T>, name: &str) -> Result<Array2<bool>> {
    a.mapv(|v| v != T::zero())
        .into_dimensionality::<Ix2>()
        .map_err(|_| LstmError::shape(format!("mask of layer {name}"), &[0, 0], a.shape()))
}
