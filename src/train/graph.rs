//! Training a functional graph ([`Functional`]): several inputs and outputs, layers called on
//! other layers' outputs (each call with its own tape, a shared layer's gradients summed over
//! its calls), `initial_state` from other tensors (its cotangent flows back to them),
//! `return_state`, explicit `mask` tensors (the op layers of a functional `Masking`), merges
//! and attention ([`super::layers::MergeOp`]), a loss per output with its weight. The
//! single-input layers run the chain's own per-layer passes (`chain::layer_forward` and
//! `layer_backward`).

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

/// The number of outputs a call of `layer` gives.
fn output_count<T>(layer: &GraphLayer<T>, kwargs: &serde_json::Map<String, Value>) -> usize {
    match layer {
        GraphLayer::One(TrainLayer::Recurrent { config, .. }) if config.return_state => {
            1 + if matches!(config.cell, crate::config::Cell::Lstm) {
                2
            } else {
                1
            }
        }
        GraphLayer::Many(op)
            if op.class().ends_with("Attention")
                && kwargs.get("return_attention_scores") == Some(&Value::Bool(true)) =>
        {
            2
        }
        _ => 1,
    }
}

impl<T: Element> Functional<T> {
    /// The trainable graph of `model` with its weights in `T`; a layer or argument that is
    /// not trained (a nested model, a stateful layer, a regularizer, ...) is an error naming
    /// it.
    pub fn from_model(model: &KerasModel) -> Result<Self> {
        let config = model.config();
        super::load::refuse_untrained_wrappers(config)?;
        refuse_training_randomness(config)?;
        let built = model
            .layers_with_weights()
            .map_err(|why| LstmError::invalid("model", format!("not trainable: {why}")))?;
        let graph = model.graph();
        let entries = config
            .pointer("/config/layers")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let entry_of = |name: &str| {
            entries
                .iter()
                .find(|e| e.pointer("/config/name").and_then(Value::as_str) == Some(name))
        };
        let specs: Vec<CallSpec> = graph.calls();
        let inputs: Vec<String> = graph.inputs.iter().map(|i| i.name.clone()).collect();
        let mut layers: Vec<(String, GraphLayer<T>)> = Vec::new();
        for (name, class) in &graph.layers {
            if class == "InputLayer" {
                continue;
            }
            let cfg = entry_of(name)
                .and_then(|e| e.get("config"))
                .unwrap_or(&Value::Null);
            let layer = if let Some(l) = super::load::identity_layer::<T>(class, cfg, name)? {
                GraphLayer::One(l)
            } else {
                let Some((_, ml)) = built.iter().find(|(n, _)| n == name) else {
                    return Err(LstmError::unsupported(
                        "layer",
                        format!("{name} ({class}) in training"),
                    ));
                };
                match ml {
                    crate::model::ModelLayer::Other {
                        class,
                        config: lcfg,
                        weights,
                    } if MERGE_CLASSES.contains(&class.as_str()) => {
                        let kwargs = specs
                            .iter()
                            .find(|c| &c.layer == name)
                            .map(|c| c.kwargs.clone())
                            .unwrap_or_default();
                        let op = super::layers::merge_from_keras::<T>(
                            class,
                            lcfg,
                            name,
                            &kwargs,
                            weights.clone(),
                        )?
                        .ok_or_else(|| {
                            LstmError::unsupported("layer", format!("{name} ({class}) in training"))
                        })?;
                        GraphLayer::Many(op)
                    }
                    ml => {
                        let l = train_layer(config, name, ml)?;
                        if matches!(&l, TrainLayer::Recurrent { config, .. } if config.stateful) {
                            return Err(LstmError::unsupported(
                                "stateful",
                                format!(
                                    "true on layer {name} in a Functional (the chain trainer, \
                                     Sequential, carries the states)"
                                ),
                            ));
                        }
                        GraphLayer::One(l)
                    }
                }
            };
            layers.push((name.clone(), layer));
        }
        // (layer name, call) -> index into `calls`
        let mut calls: Vec<Call> = Vec::new();
        let mut keys: Vec<(String, usize)> = Vec::new();
        let mut counts: Vec<usize> = Vec::new();
        let resolve = |t: &TensorRef, keys: &[(String, usize)], counts: &[usize]| -> Result<Src> {
            if let Some(k) = inputs.iter().position(|n| *n == t.0) {
                return Ok(Src::Input(k));
            }
            let c = keys
                .iter()
                .position(|(n, c)| *n == t.0 && *c == t.1)
                .ok_or_else(|| LstmError::invalid("model", format!("no call {}:{}", t.0, t.1)))?;
            if t.2 >= counts[c] {
                return Err(LstmError::invalid(
                    "model",
                    format!("layer {} has {} outputs, not {}", t.0, counts[c], t.2 + 1),
                ));
            }
            Ok(Src::Out(c, t.2))
        };
        for spec in &specs {
            let layer = layers
                .iter()
                .position(|(n, _)| *n == spec.layer)
                .ok_or_else(|| LstmError::invalid("model", format!("no layer {}", spec.layer)))?;
            let many = |ts: &[TensorRef]| -> Result<Vec<Src>> {
                ts.iter().map(|t| resolve(t, &keys, &counts)).collect()
            };
            let call = Call {
                layer,
                inputs: many(&spec.inputs)?,
                states: many(&spec.states)?,
                mask: spec
                    .mask
                    .as_ref()
                    .map(|t| resolve(t, &keys, &counts))
                    .transpose()?,
                scalars: spec.scalars.clone(),
            };
            counts.push(output_count(&layers[layer].1, &spec.kwargs));
            keys.push((spec.layer.clone(), spec.call));
            calls.push(call);
        }
        let mut outputs = Vec::new();
        for (_, t) in &graph.outputs {
            if t.2 == usize::MAX {
                // (a Sequential model: every output of its last layer)
                let c = keys
                    .iter()
                    .position(|(n, c)| *n == t.0 && *c == t.1)
                    .ok_or_else(|| LstmError::invalid("model", format!("no output {}", t.0)))?;
                outputs.extend((0..counts[c]).map(|k| Src::Out(c, k)));
            } else {
                outputs.push(resolve(t, &keys, &counts)?);
            }
        }
        // per layer, from its config entry: the regularizers and constraints of its
        // weights, whether it is frozen, its activity regularizer
        let (mut regularizers, mut constraints, mut frozen, mut activity) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut inner_activity = Vec::new();
        for (name, l) in &layers {
            let entry = entry_of(name);
            let class = entry
                .and_then(|e| e.get("class_name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let cfg = entry.and_then(|e| e.get("config")).unwrap_or(&Value::Null);
            let shapes: Vec<Vec<usize>> = l.weights().iter().map(|w| w.shape().to_vec()).collect();
            regularizers.push(layer_regularizers(class, cfg, name, &shapes)?);
            constraints.push(layer_constraints(class, cfg, name, &shapes)?);
            frozen.push(frozen_layer(entry, name)?);
            activity.push(activity_regularizer(class, cfg, name)?);
            inner_activity.push(inner_activity_regularizers(class, cfg, name)?);
        }
        Ok(Functional {
            layers,
            regularizers,
            constraints,
            frozen,
            activity,
            inner_activity,
            calls,
            inputs,
            outputs,
        })
    }

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

    /// The gradients and the new state of the layers that keep one, by layer index.
    #[allow(clippy::type_complexity)]
    pub(super) fn gradients_with(
        &self,
        path: &dyn RecurrentPath<T>,
        xs: &[ArrayViewD<'_, T>],
        targets: &[ArrayViewD<'_, T>],
        losses: &Losses,
        training: Option<u64>,
    ) -> Result<(GraphGradients<T>, Vec<(usize, Vec<ArrayD<T>>)>)> {
        let n_out = self.outputs.len();
        if losses.per_output.len() != n_out || targets.len() != n_out {
            return Err(LstmError::invalid(
                "losses",
                format!(
                    "the model has {n_out} outputs; got {} losses and {} targets",
                    losses.per_output.len(),
                    targets.len()
                ),
            ));
        }
        let (inputs, vals, mut caches) = self.forward(path, xs, training)?;
        // cotangents: of each call's outputs, of its logits, of the inputs
        let mut cot: Vec<Vec<Option<ArrayD<T>>>> = vals
            .iter()
            .map(|v| v.iter().map(|_| None).collect())
            .collect();
        let mut lcot: Vec<Option<ArrayD<T>>> = vec![None; vals.len()];
        let mut icot: Vec<Option<ArrayD<T>>> = vec![None; inputs.len()];
        fn add<T: Element>(slot: &mut Option<ArrayD<T>>, d: ArrayD<T>) {
            match slot {
                Some(s) => *s += &d,
                None => *slot = Some(d),
            }
        }
        let mut total = T::zero();
        for (o, (&src, spec)) in self.outputs.iter().zip(&losses.per_output).enumerate() {
            let Some((loss, weight)) = spec else {
                continue;
            };
            let t = match src {
                Src::Input(i) => &inputs[i],
                Src::Out(c, k) => &vals[c][k],
            };
            let lg = loss
                .evaluate(
                    t.data.view(),
                    t.logits.as_ref().map(|l| l.view()),
                    targets[o].view(),
                    t.mask.as_ref().map(|m| m.view().into_dyn()),
                )
                .map_err(|e| match e {
                    LstmError::ShapeMismatch {
                        what,
                        expected,
                        actual,
                    } => LstmError::ShapeMismatch {
                        what: format!("{what} (output {o})"),
                        expected,
                        actual,
                    },
                    other => other,
                })?;
            let w = T::from_f64(*weight);
            total += lg.value * w;
            let grad = lg.grad.mapv(|v| v * w);
            match src {
                Src::Input(i) => add(&mut icot[i], grad),
                Src::Out(c, _) if lg.wrt_logits => add(&mut lcot[c], grad),
                Src::Out(c, k) => add(&mut cot[c][k], grad),
            }
        }
        // activity regularizers: `r(y) / batch` for every output of each call (Keras's
        // add_loss in Layer.__call__), its gradient
        let activity = |r: &Regularizer, y: &ArrayD<T>, what: &dyn Fn() -> String| {
            let rows = y.shape().first().copied().unwrap_or(1);
            if rows == 0 {
                // (divide_no_nan: no rows, no loss)
                return Ok(None);
            }
            r.check_shape(y.shape(), &what())?;
            let b = T::from_f64(rows as f64);
            Ok::<_, LstmError>(Some((
                r.loss(y.view()) / b,
                r.gradient(y.view()).mapv(|v| v / b),
            )))
        };
        for (k, call) in self.calls.iter().enumerate() {
            let name = &self.layers[call.layer].0;
            if let Some(r) = &self.activity[call.layer] {
                for (o, t) in vals[k].iter().enumerate() {
                    let what = || format!("the activity regularizer of layer {name}");
                    if let Some((l, g)) = activity(r, &t.data, &what)? {
                        total += l;
                        add(&mut cot[k][o], g);
                    }
                }
            }
            // a Bidirectional's inner layers': on each direction's output (Keras calls
            // them as layers), their cotangents handed to that direction's backward pass
            let inner = &self.inner_activity[call.layer];
            if let (CallCache::One(c), true) = (&mut caches[k], inner.iter().any(Option::is_some)) {
                if let Cache::Bidi(_, _, ys, _, extra) = c.as_mut() {
                    for ((r, y), e) in inner.iter().zip(ys.iter()).zip(extra.iter_mut()) {
                        let Some(r) = r else { continue };
                        let what = || format!("the activity regularizer inside layer {name}");
                        if let Some((l, g)) = activity(r, y, &what)? {
                            total += l;
                            *e = Some(g);
                        }
                    }
                }
            }
        }
        let mut wgrads: Vec<Option<Vec<ArrayD<T>>>> = vec![None; self.layers.len()];
        let mut squares: Vec<Option<ArrayD<T>>> = vec![None; self.layers.len()];
        // the new state of the layers that keep one: each training-mode call's update from
        // the state its layer's earlier calls left, in call order (Keras assigns it in each
        // call: a shared BatchNormalization moves its statistics twice in a step)
        let mut running: Vec<Option<Vec<ArrayD<T>>>> = vec![None; self.layers.len()];
        for (call, cache) in self.calls.iter().zip(&caches) {
            let (GraphLayer::One(l), CallCache::One(c)) = (&self.layers[call.layer].1, cache)
            else {
                continue;
            };
            if self.training_of(call.layer, training).is_none() {
                continue;
            }
            let before = running[call.layer].take().unwrap_or_else(|| l.state());
            running[call.layer] = Some(state_after(l, &before, c).unwrap_or(before));
        }
        let states: Vec<(usize, Vec<ArrayD<T>>)> = running
            .into_iter()
            .enumerate()
            .filter_map(|(at, s)| Some((at, s?)))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        for (k, (call, cache)) in self.calls.iter().zip(caches).enumerate().rev() {
            let (name, layer) = &self.layers[call.layer];
            let shape0 = vals[k][0].data.raw_dim();
            let (dxs, w): (Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>) = match (layer, cache) {
                (GraphLayer::One(l), CallCache::One(cache)) => {
                    let (d, from_logits) = match (cot[k][0].take(), lcot[k].take()) {
                        (Some(d), Some(dl)) => {
                            // a cross-entropy output (taken from its logits) that other
                            // layers or an activity regularizer read too: their cotangent
                            // passes the activation, and the two meet at the logits
                            let act = logits_activation(l);
                            let (Some(act), Some(z)) = (act, vals[k][0].logits.as_ref()) else {
                                return Err(LstmError::invalid(
                                    format!("output of layer {name}"),
                                    "a cotangent of logits that are not kept",
                                ));
                            };
                            (dense_activation_backward(act, z, &d) + &dl, true)
                        }
                        (None, Some(dl)) => (dl, true),
                        (Some(d), None) => (d, false),
                        (None, None) => (ArrayD::zeros(shape0), false),
                    };
                    let two = |d: Option<ArrayD<T>>| -> Result<Option<Array2<T>>> {
                        d.map(|d| {
                            d.into_dimensionality::<Ix2>().map_err(|_| {
                                LstmError::invalid(format!("layer {name}"), "state cotangent")
                            })
                        })
                        .transpose()
                    };
                    let d_states = [
                        two(cot[k].get_mut(1).and_then(Option::take))?,
                        two(cot[k].get_mut(2).and_then(Option::take))?,
                    ];
                    let back =
                        layer_backward(path, k, (name, l), *cache, d, d_states, from_logits)?;
                    if let Some(sq) = back.square {
                        add(&mut squares[call.layer], sq);
                    }
                    let mut dxs = vec![Some(back.dx)];
                    let (dh, dc) = back.d_init;
                    match call.states.len() {
                        0 => {}
                        1 => dxs.push(Some(dh.into_dyn())),
                        _ => dxs.extend([Some(dh.into_dyn()), Some(dc.into_dyn())]),
                    }
                    (dxs, back.weights)
                }
                (GraphLayer::Many(op), CallCache::Many(cache)) => {
                    let d = cot[k][0].take().unwrap_or_else(|| ArrayD::zeros(shape0));
                    let extra: Vec<Option<ArrayD<T>>> =
                        cot[k].iter_mut().skip(1).map(Option::take).collect();
                    let (mut dxs, w) = op.backward_extra(name, &cache, d, extra)?;
                    dxs.resize(call.inputs.len(), None);
                    (dxs, w)
                }
                _ => {
                    return Err(LstmError::invalid(
                        format!("layer {name}"),
                        "cache mismatch",
                    ))
                }
            };
            // (inputs, then the initial states, in the order the call read them)
            for (&src, dx) in call.inputs.iter().chain(&call.states).zip(dxs) {
                let Some(dx) = dx else { continue };
                match src {
                    Src::Input(i) => add(&mut icot[i], dx),
                    Src::Out(c, o) => add(&mut cot[c][o], dx),
                }
            }
            match &mut wgrads[call.layer] {
                Some(sum) => {
                    for (s, g) in sum.iter_mut().zip(&w) {
                        *s += g;
                    }
                }
                slot => *slot = Some(w),
            }
        }
        let mut weights = Vec::new();
        let mut sparse_squares = Vec::new();
        for (k, ((_, layer), g)) in self.layers.iter().zip(wgrads).enumerate() {
            if self.frozen[k] {
                // (not among Keras's trainable_weights, nor its regularization losses)
                continue;
            }
            let values = layer.weights();
            let mut g = match g {
                Some(g) => g,
                None => values.iter().map(|w| ArrayD::zeros(w.raw_dim())).collect(),
            };
            for (j, gj) in g.iter_mut().enumerate() {
                let mut square = if j == 0 { squares[k].take() } else { None };
                // (Keras's model.losses: unweighted, beside the outputs' losses)
                if let Some(r) = self.regularizers[k].get(j).copied().flatten() {
                    total += r.loss(values[j].view());
                    let dr = r.gradient(values[j].view());
                    // (TensorFlow sums an Embedding's slices and a dense gradient into a
                    // dense tensor: the optimizer sees no slices. Measured: the slices'
                    // squares kept, plus the dense part's, leave graph_fit_graph_reg's table
                    // 4.2e-2 from Keras's after 20 Adam steps; dense, 2.8e-6)
                    square = None;
                    *gj += &dr;
                }
                sparse_squares.push(square);
            }
            weights.extend(g);
        }
        let input_grads = icot
            .into_iter()
            .zip(&inputs)
            .map(|(d, x)| d.unwrap_or_else(|| ArrayD::zeros(x.data.raw_dim())))
            .collect();
        Ok((
            GraphGradients {
                loss: total,
                weights,
                inputs: input_grads,
                sparse_squares,
            },
            states,
        ))
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

/// The sigmoid or softmax between a layer's logits and its output (a Dense's activation, an
/// Activation layer's), None for a layer that gives no logits.
fn logits_activation<T: Element>(l: &TrainLayer<T>) -> Option<crate::model::DenseActivation> {
    match l {
        TrainLayer::Dense { activation, .. } => Some(*activation),
        TrainLayer::Op(op) => op.logits_activation(),
        _ => None,
    }
}

/// The mask `[B, T]` a tensor of 0/1 values (an explicit `mask` argument) gives.
fn bool_mask<T: Element>(a: &ArrayD<T>, name: &str) -> Result<Array2<bool>> {
    a.mapv(|v| v != T::zero())
        .into_dimensionality::<Ix2>()
        .map_err(|_| LstmError::shape(format!("mask of layer {name}"), &[0, 0], a.shape()))
}

/// Whether the layer of config entry `entry` is frozen (`trainable: false`; a wrapper's
/// inner layers must agree with it: Keras's setter freezes them together).
fn frozen_layer(entry: Option<&Value>, name: &str) -> Result<bool> {
    let cfg = entry.and_then(|e| e.get("config"));
    let trainable = |c: Option<&Value>| {
        c.and_then(|c| c.get("trainable"))
            .and_then(Value::as_bool)
            .unwrap_or(true)
    };
    let frozen = !trainable(cfg);
    for key in ["layer", "backward_layer"] {
        let inner = cfg.and_then(|c| c.get(key)).and_then(|l| l.get("config"));
        if inner.is_some() && trainable(inner) == frozen {
            return Err(LstmError::unsupported(
                format!("trainable of layer {name}"),
                format!(
                    "{} on the wrapper and {} on its {key} (a wrapper frozen apart from its \
                     inner layer is not trained here)",
                    !frozen,
                    trainable(inner)
                ),
            ));
        }
    }
    Ok(frozen)
}
