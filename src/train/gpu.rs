//! A trainable chain with its recurrent layers on the GPU ([`GpuSequential`]).

use super::dropout::GateMasks;
use super::path::{CpuPath, RecurrentPath, Tape};
use super::{FitOptions, Gradients, History, Loss, LstmCall, LstmCotangents, LstmGrads};
use super::{Functional, GraphGradients, GraphLayer, Losses, Optimizer, Sequential, TrainLayer};
use crate::config::LstmConfig;
use crate::cpu::Lstm;
use crate::error::{LstmError, Result};
use crate::gpu::{GpuContext, GpuRecurrentTrainer};
use crate::weights::LstmWeights;
use ndarray::{ArrayD, ArrayView, ArrayView2, ArrayView3, ArrayViewD, Dimension};
use std::sync::Arc;

/// A [`Sequential`] (f32) whose recurrent layers run their forward pass, tape and backward
/// pass through time on the GPU ([`GpuRecurrentTrainer`]: one submission for each layer's
/// forward and one for its backward), with `Masking`, `Dense`, the loss and the optimizer on
/// the CPU (they are small beside the recurrence). [`gradients`](Self::gradients) and
/// [`fit`](Self::fit) are [`Sequential::gradients`] and [`Sequential::fit`] on this path
/// (the same checks and errors; within 1e-4 of the CPU); after each optimizer step the new
/// weights are written to the device in place.
///
/// ```no_run
/// use lstm_wgpu::gpu::GpuContext;
/// use lstm_wgpu::model::KerasModel;
/// use lstm_wgpu::train::{FitOptions, GpuSequential, Loss, Optimizer, Sequential};
/// # fn main() -> lstm_wgpu::Result<()> {
/// let original = std::fs::read("model.keras").map_err(|e| lstm_wgpu::LstmError::invalid("model.keras", e.to_string()))?;
/// let model = KerasModel::load(std::path::Path::new("model.keras"))?;
/// let net = Sequential::<f32>::from_model(&model)?;
/// let mut gpu = GpuSequential::new(net, GpuContext::new()?)?;
/// let x = ndarray::Array3::<f32>::zeros((32, 10, 3));
/// let y = ndarray::Array2::<f32>::zeros((32, 1)).into_dyn();
/// let mut opt = Optimizer::adam(1e-3);
/// gpu.fit(x.view(), y.view(), &FitOptions::new(Loss::MeanSquaredError, 8, 5), &mut opt)?;
/// let trained: Vec<u8> = gpu.sequential().keras_file(&original)?;
/// # Ok(()) }
/// ```
pub struct GpuSequential {
    net: Sequential<f32>,
    /// Per layer of the chain: no trainer, one, or a Bidirectional's two (None for a
    /// direction the GPU does not train: it runs on the CPU).
    trainers: Vec<Vec<Option<GpuRecurrentTrainer>>>,
}

impl std::fmt::Debug for GpuSequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuSequential")
            .field("layers", &self.net.layers.len())
            .field(
                "gpu_layers",
                &self
                    .trainers
                    .iter()
                    .filter(|t| t.iter().any(Option::is_some))
                    .count(),
            )
            .finish()
    }
}

impl GpuSequential {
    /// Uploads the recurrent layers of `net` to `ctx`'s device. A recurrent layer the GPU
    /// kernels do not train (a GRU with `reset_after=false`) runs its passes on the CPU
    /// (logged at info level), as does a call with `recurrent_dropout` in training mode.
    pub fn new(net: Sequential<f32>, ctx: Arc<GpuContext>) -> Result<Self> {
        let trainers = net
            .layers
            .iter()
            .map(|(_, l)| trainers_of(l, &ctx))
            .collect::<Result<_>>()?;
        Ok(GpuSequential { net, trainers })
    }

    /// The chain (its weights are the trained ones).
    pub fn sequential(&self) -> &Sequential<f32> {
        &self.net
    }

    /// The chain, leaving the GPU.
    pub fn into_sequential(self) -> Sequential<f32> {
        self.net
    }

    /// Replaces every weight ([`Sequential::set_weights`]) here and on the device.
    pub fn set_weights(&mut self, new: &[ArrayD<f32>]) -> Result<()> {
        self.net.set_weights(new)?;
        upload(&self.trainers, &self.net)
    }

    /// The model's output on `x [B, T, I]`.
    pub fn predict<D: Dimension>(&self, x: ArrayView<'_, f32, D>) -> Result<ArrayD<f32>> {
        self.net
            .predict_with(&GpuPath(&self.trainers), x.into_dyn())
    }

    /// [`Sequential::gradients`] with the recurrent layers on the GPU.
    pub fn gradients<D: Dimension>(
        &self,
        x: ArrayView<'_, f32, D>,
        y: ArrayViewD<'_, f32>,
        loss: Loss,
    ) -> Result<Gradients<f32>> {
        self.net
            .gradients_with(&GpuPath(&self.trainers), x.into_dyn(), y, loss, None)
    }

    /// [`Sequential::gradients_in_training`] with the recurrent layers on the GPU (the same
    /// Dropout masks for the same seed).
    pub fn gradients_in_training<D: Dimension>(
        &self,
        x: ArrayView<'_, f32, D>,
        y: ArrayViewD<'_, f32>,
        loss: Loss,
        seed: u64,
    ) -> Result<Gradients<f32>> {
        self.net
            .gradients_with(&GpuPath(&self.trainers), x.into_dyn(), y, loss, Some(seed))
    }

    /// [`Sequential::fit`] with the recurrent layers on the GPU: the same batches, steps,
    /// history and errors ([`LstmError::TrainingDiverged`] keeps the weights from before the
    /// step, here and on the device).
    pub fn fit<D: Dimension>(
        &mut self,
        x: ArrayView<'_, f32, D>,
        y: ArrayViewD<'_, f32>,
        options: &FitOptions,
        optimizer: &mut Optimizer,
    ) -> Result<History> {
        let trainers = &self.trainers;
        self.net.fit_with(
            &GpuPath(trainers),
            x.into_dyn(),
            y,
            options,
            optimizer,
            &mut |net| upload(trainers, net),
        )
    }
}

/// A [`Functional`] graph (f32) whose recurrent calls run their forward pass, tape and
/// backward pass through time on the GPU, as [`GpuSequential`] does for a chain: a layer's
/// weights are uploaded once (a shared layer's calls use its one trainer, each call with its
/// own tape), the other layers, the losses and the optimizer run on the CPU, and the new
/// weights are written to the device after each step. [`gradients`](Self::gradients) and
/// [`fit`](Self::fit) are [`Functional::gradients`] and [`Functional::fit`] on this path.
///
/// ```no_run
/// use lstm_wgpu::gpu::GpuContext;
/// use lstm_wgpu::model::KerasModel;
/// use lstm_wgpu::train::{FitOptions, Functional, GpuFunctional, Loss, Losses, Optimizer};
/// # fn main() -> lstm_wgpu::Result<()> {
/// let model = KerasModel::load(std::path::Path::new("encoder_decoder.keras"))?;
/// let mut gpu = GpuFunctional::new(Functional::<f32>::from_model(&model)?, GpuContext::new()?)?;
/// let (enc, dec) = (ndarray::Array3::<f32>::zeros((32, 8, 4)), ndarray::Array3::<f32>::zeros((32, 6, 3)));
/// let y = ndarray::Array3::<f32>::zeros((32, 6, 3)).into_dyn();
/// let losses = Losses::new(vec![Some(Loss::MeanSquaredError)]);
/// let mut opt = Optimizer::adam(1e-3);
/// gpu.fit(
///     &[enc.view().into_dyn(), dec.view().into_dyn()],
///     &[y.view()],
///     &losses,
///     &FitOptions::new(Loss::MeanSquaredError, 8, 5),
///     &mut opt,
/// )?;
/// # Ok(()) }
/// ```
pub struct GpuFunctional {
    net: Functional<f32>,
    /// Per layer, as [`GpuSequential`]'s.
    trainers: Vec<Vec<Option<GpuRecurrentTrainer>>>,
    /// The layer of each call.
    call_layers: Vec<usize>,
}

impl std::fmt::Debug for GpuFunctional {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuFunctional")
            .field("layers", &self.net.layers.len())
            .field("calls", &self.call_layers.len())
            .finish()
    }
}

impl GpuFunctional {
    /// Uploads the recurrent layers of `net` to `ctx`'s device (a GRU with
    /// `reset_after=false`, and a call with `recurrent_dropout` in training mode, run on the
    /// CPU, as in [`GpuSequential::new`]).
    pub fn new(net: Functional<f32>, ctx: Arc<GpuContext>) -> Result<Self> {
        let trainers = net
            .layers
            .iter()
            .map(|(_, l)| match l {
                GraphLayer::One(l) => trainers_of(l, &ctx),
                GraphLayer::Many(_) => Ok(Vec::new()),
            })
            .collect::<Result<_>>()?;
        let call_layers = net.call_layers();
        Ok(GpuFunctional {
            net,
            trainers,
            call_layers,
        })
    }

    /// The layers whose passes run on the GPU (a layer not named here runs on the CPU).
    pub fn gpu_layers(&self) -> Vec<&str> {
        self.net
            .layers
            .iter()
            .zip(&self.trainers)
            .filter(|(_, t)| t.iter().any(Option::is_some))
            .map(|((n, _), _)| n.as_str())
            .collect()
    }

    /// The graph (its weights are the trained ones).
    pub fn functional(&self) -> &Functional<f32> {
        &self.net
    }

    /// The graph, leaving the GPU.
    pub fn into_functional(self) -> Functional<f32> {
        self.net
    }

    /// Replaces every weight ([`Functional::set_weights`]) here and on the device.
    pub fn set_weights(&mut self, new: &[ArrayD<f32>]) -> Result<()> {
        self.net.set_weights(new)?;
        upload_graph(&self.trainers, &self.net)
    }

    fn path(&self) -> GpuGraphPath<'_> {
        GpuGraphPath(&self.trainers, &self.call_layers)
    }

    /// [`Functional::predict`] with the recurrent calls on the GPU.
    pub fn predict(&self, xs: &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>> {
        self.net.predict_with(&self.path(), xs)
    }

    /// [`Functional::gradients`] with the recurrent calls on the GPU.
    pub fn gradients(
        &self,
        xs: &[ArrayViewD<'_, f32>],
        targets: &[ArrayViewD<'_, f32>],
        losses: &Losses,
    ) -> Result<GraphGradients<f32>> {
        Ok(self
            .net
            .gradients_with(&self.path(), xs, targets, losses, None)?
            .0)
    }

    /// [`Functional::gradients_in_training`] with the recurrent calls on the GPU (the same
    /// Dropout masks for the same seed).
    pub fn gradients_in_training(
        &self,
        xs: &[ArrayViewD<'_, f32>],
        targets: &[ArrayViewD<'_, f32>],
        losses: &Losses,
        seed: u64,
    ) -> Result<GraphGradients<f32>> {
        Ok(self
            .net
            .gradients_with(&self.path(), xs, targets, losses, Some(seed))?
            .0)
    }

    /// [`Functional::fit`] with the recurrent calls on the GPU: the same batches, steps,
    /// history and errors ([`LstmError::TrainingDiverged`] keeps the weights from before the
    /// step, here and on the device). `options.recompute` is not read (the tapes stay on
    /// the device).
    pub fn fit(
        &mut self,
        xs: &[ArrayViewD<'_, f32>],
        targets: &[ArrayViewD<'_, f32>],
        losses: &Losses,
        options: &FitOptions,
        optimizer: &mut Optimizer,
    ) -> Result<History> {
        let (trainers, calls) = (&self.trainers, &self.call_layers);
        self.net.fit_with(
            &GpuGraphPath(trainers, calls),
            xs,
            targets,
            losses,
            options,
            optimizer,
            &mut |net| upload_graph(trainers, net),
        )
    }
}

/// Writes the recurrent weights of the graph `net` to their trainers.
fn upload_graph(
    trainers: &[Vec<Option<GpuRecurrentTrainer>>],
    net: &Functional<f32>,
) -> Result<()> {
    upload_layers(
        trainers,
        net.layers.iter().map(|(_, l)| match l {
            GraphLayer::One(l) => Some(l),
            GraphLayer::Many(_) => None,
        }),
    )
}

/// The trainers of a layer: none, one, or a Bidirectional's two (None for a direction the
/// GPU does not train: a GRU without `reset_after`, which runs on the CPU).
fn trainers_of(
    l: &TrainLayer<f32>,
    ctx: &Arc<GpuContext>,
) -> Result<Vec<Option<GpuRecurrentTrainer>>> {
    let trainer = |cfg: &LstmConfig, w: &LstmWeights<f32>| -> Result<Option<GpuRecurrentTrainer>> {
        if matches!(cfg.cell, crate::config::Cell::Gru { reset_after: false }) {
            log::info!(
                "layer {}: a GRU without reset_after trains on the CPU",
                cfg.name
            );
            return Ok(None);
        }
        GpuRecurrentTrainer::new(ctx.clone(), &Lstm::new(cfg.clone(), w.clone())?).map(Some)
    };
    Ok(match l {
        TrainLayer::Recurrent {
            config, weights, ..
        } => vec![trainer(config, weights)?],
        TrainLayer::Bidirectional {
            forward, backward, ..
        } => vec![
            trainer(&forward.0, &forward.1)?,
            trainer(&backward.0, &backward.1)?,
        ],
        TrainLayer::Masking { .. }
        | TrainLayer::Embedding { .. }
        | TrainLayer::Dropout { .. }
        | TrainLayer::Op(_)
        | TrainLayer::Dense { .. } => Vec::new(),
    })
}

/// Writes the recurrent weights of `net` to their trainers.
fn upload(trainers: &[Vec<Option<GpuRecurrentTrainer>>], net: &Sequential<f32>) -> Result<()> {
    upload_layers(trainers, net.layers.iter().map(|(_, l)| Some(l)))
}

/// Writes the recurrent weights of `layers` (None: a layer with no trainers) to their
/// trainers.
fn upload_layers<'a>(
    trainers: &[Vec<Option<GpuRecurrentTrainer>>],
    layers: impl Iterator<Item = Option<&'a TrainLayer<f32>>>,
) -> Result<()> {
    let write = |t: &Option<GpuRecurrentTrainer>, w: &LstmWeights<f32>| match t {
        Some(t) => t.write_weights(w),
        None => Ok(()),
    };
    for (t, l) in trainers.iter().zip(layers) {
        match l {
            Some(TrainLayer::Recurrent { weights, .. }) => write(&t[0], weights)?,
            Some(TrainLayer::Bidirectional {
                forward, backward, ..
            }) => {
                write(&t[0], &forward.1)?;
                write(&t[1], &backward.1)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The recurrent layers on their trainers, by layer index.
struct GpuPath<'a>(&'a [Vec<Option<GpuRecurrentTrainer>>]);

/// The recurrent calls of a graph on their layers' trainers: `at.0` is the call's index,
/// `.1[at.0]` its layer's (a shared layer's calls share its trainer, each with its own tape).
struct GpuGraphPath<'a>(&'a [Vec<Option<GpuRecurrentTrainer>>], &'a [usize]);

impl RecurrentPath<f32> for GpuGraphPath<'_> {
    fn forward(
        &self,
        at: (usize, usize),
        layer: (&LstmConfig, &LstmWeights<f32>),
        x: ArrayView3<'_, f32>,
        mask: Option<ArrayView2<'_, bool>>,
        init: Option<(ArrayView2<'_, f32>, ArrayView2<'_, f32>)>,
        drop: Option<&GateMasks<f32>>,
    ) -> Result<(LstmCall<f32>, Tape<f32>)> {
        let at = (self.layer_of(at.0, &layer.0.name)?, at.1);
        GpuPath(self.0).forward(at, layer, x, mask, init, drop)
    }

    fn backward(
        &self,
        at: (usize, usize),
        layer: (&LstmConfig, &LstmWeights<f32>),
        x: ArrayView3<'_, f32>,
        tape: &Tape<f32>,
        cot: &LstmCotangents<f32>,
    ) -> Result<LstmGrads<f32>> {
        let at = (self.layer_of(at.0, &layer.0.name)?, at.1);
        GpuPath(self.0).backward(at, layer, x, tape, cot)
    }
}

impl GpuGraphPath<'_> {
    fn layer_of(&self, call: usize, name: &str) -> Result<usize> {
        self.1
            .get(call)
            .copied()
            .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "a call of no layer"))
    }
}

impl GpuPath<'_> {
    /// The trainer of a layer's direction (None: it runs on the CPU).
    fn trainer(
        &self,
        (layer, dir): (usize, usize),
        name: &str,
    ) -> Result<Option<&GpuRecurrentTrainer>> {
        self.0
            .get(layer)
            .and_then(|t| t.get(dir))
            .map(Option::as_ref)
            .ok_or_else(|| LstmError::invalid(format!("layer {name}"), "has no GPU trainer"))
    }
}

impl RecurrentPath<f32> for GpuPath<'_> {
    fn forward(
        &self,
        at: (usize, usize),
        layer: (&LstmConfig, &LstmWeights<f32>),
        x: ArrayView3<'_, f32>,
        mask: Option<ArrayView2<'_, bool>>,
        init: Option<(ArrayView2<'_, f32>, ArrayView2<'_, f32>)>,
        drop: Option<&GateMasks<f32>>,
    ) -> Result<(LstmCall<f32>, Tape<f32>)> {
        let cfg = layer.0;
        let Some(trainer) = self.trainer(at, &cfg.name)? else {
            return CpuPath.forward(at, layer, x, mask, init, drop);
        };
        if drop.is_some() {
            // the GPU kernels have no per-gate masks: this call's passes run on the CPU
            log::debug!(
                "layer {}: recurrent_dropout in training mode runs on the CPU",
                cfg.name
            );
            return CpuPath.forward(at, layer, x, mask, init, drop);
        }
        let (call, tape) = trainer.forward(x, mask, init)?;
        Ok((call, Tape::Gpu(Box::new(tape))))
    }

    fn backward(
        &self,
        at: (usize, usize),
        layer: (&LstmConfig, &LstmWeights<f32>),
        x: ArrayView3<'_, f32>,
        tape: &Tape<f32>,
        cot: &LstmCotangents<f32>,
    ) -> Result<LstmGrads<f32>> {
        match tape {
            Tape::Gpu(tape) => match self.trainer(at, &layer.0.name)? {
                Some(trainer) => trainer.backward(tape, cot),
                None => Err(LstmError::invalid(
                    format!("layer {}", layer.0.name),
                    "a GPU tape of a layer without a GPU trainer",
                )),
            },
            // a call that ran on the CPU (recurrent_dropout)
            Tape::Cpu(_) | Tape::CpuRecomputed(_) => CpuPath.backward(at, layer, x, tape, cot),
        }
    }
}
