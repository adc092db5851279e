//! Training with Keras's gradients, losses and optimizers: backpropagation through time for
//! `LSTM`, `GRU` (both forms) and `SimpleRNN` ([`lstm_gradients`]), a trainable chain of
//! `Embedding`, `Masking`, recurrent (with their `dropout` and `recurrent_dropout`), `Dropout`,
//! `SpatialDropout1D`, `Dense` and the [`layers`] around them (Conv1D, Conv2D, 1-D and 2-D
//! pooling, LayerNormalization, BatchNormalization, RepeatVector, Flatten, Reshape, Permute,
//! Activation, GaussianNoise, GaussianDropout, AlphaDropout, ConvLSTM1D, ConvLSTM2D)
//! ([`Sequential`], built from a loaded [`KerasModel`](crate::model::KerasModel)) with
//! [`Sequential::gradients`] (the loss and its gradient w.r.t. every weight and the input, as
//! `tf.GradientTape` gives them) and [`Sequential::fit`] (Keras's `model.fit` with
//! `shuffle=False`: the batches in order, one optimizer step each, the per-epoch mean loss).
//! Generic over f32 and f64.
//!
//! The trained weights are written back as Keras 3 files ([`Sequential::weights_h5`],
//! [`Sequential::keras_file`]).
//!
//! On the GPU: [`GpuSequential`] runs the chain's recurrent layers there (forward, tape and
//! backward through time; [`crate::gpu::GpuRecurrentTrainer`] for one layer).
//!
//! Functional graphs ([`Functional`], CPU): several inputs and outputs with a loss and weight
//! each ([`Losses`]), shared layers, `initial_state` from other tensors (its gradient flows
//! back), `return_state`, merges, `Attention` / `AdditiveAttention`, `Dot` and the op layers of a
//! functional `Masking` ([`layers::MergeOp`]), weight regularizers ([`Regularizer`]: L1, L2,
//! L1L2 on any weight; activity regularizers on a call's outputs and `ActivityRegularization`;
//! their losses added as Keras's `model.losses`), weight constraints ([`Constraint`]:
//! MaxNorm, NonNeg, UnitNorm, MinMaxNorm, applied after each step), frozen layers
//! (`trainable: false`); [`GpuFunctional`] runs its recurrent calls on the GPU.
//!
//! Stateful layers train in the chain, their states carried between calls
//! ([`Sequential::carried`]).
//!
//! Not yet here: a `ConvLSTM`'s states and dropout in training, regularizers,
//! constraints and frozen layers in the chain (it refuses them and names `Functional`),
//! stateful layers in a `Functional`, `merge_mode=None` and returned states in a chain.
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
mod chain;
mod compile;
mod constrain;
mod ctc_loss;
mod dropout;
mod gpu;
mod graph;
mod h5write;
pub mod layers;
mod load;
mod loss;
mod optim;
mod optim_h5;
mod optim_state;
mod path;
mod pool;
pub(crate) mod recurrent;
mod regularize;
mod save;
mod sequential;

pub use activation::derivative;
pub use constrain::{Constraint, NormAxes};
pub use gpu::{GpuFunctional, GpuSequential};
pub use graph::{Functional, GraphGradients, GraphLayer, Losses};
pub use loss::{Loss, LossGrad};
pub use optim::{Optimizer, Rule};
pub use pool::{kept_buffer_bytes, release_buffers};
pub use recurrent::{lstm_gradients, LstmCall, LstmCotangents, LstmGrads};
pub use regularize::{Orthogonal, Regularizer};

use crate::config::LstmConfig;
use crate::error::{LstmError, Result};
use crate::model::DenseActivation;
use crate::weights::LstmWeights;
use ndarray::{Array1, Array2, ArrayD};

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
        /// Keras's `dropout` (of the inputs, in training mode: one `[B, I]` mask per call,
        /// the same at every step, as Keras's cell draws it; one per gate block with
        /// `recurrent_dropout`; 0 for none).
        dropout: f64,
        /// Keras's `recurrent_dropout` (of the previous `h` in each gate block's recurrent
        /// product, in training mode: one `[B, H]` mask per gate block and call, as Keras's
        /// implementation 1; 0 for none).
        recurrent_dropout: f64,
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
        /// The wrapped layer's `dropout` (each direction draws its own mask).
        dropout: f64,
        /// The wrapped layer's `recurrent_dropout` (each direction draws its own masks).
        recurrent_dropout: f64,
    },
    /// `Dropout(rate, noise_shape)`: the identity at inference; in training mode
    /// ([`Sequential::fit`], [`Sequential::gradients_in_training`]) each value is kept with
    /// probability `1 - rate` and scaled by `1 / (1 - rate)` (`tf.nn.dropout`), one draw per
    /// element of `noise_shape` (the input's shape where it says None) broadcast over the
    /// input. The draws come from this crate's seeded generator, not TensorFlow's: the
    /// semantics are Keras's, the masks are not the ones Keras would draw.
    Dropout {
        /// The fraction dropped, in `[0, 1)`.
        rate: f64,
        /// Keras's `noise_shape` (None: the input's shape).
        noise_shape: Option<Vec<Option<usize>>>,
    },
    /// `Embedding(vocab, dim, mask_zero)`: token ids `[B, T]` (integers held as `T`) to
    /// their table rows `[B, T, dim]`; with `mask_zero` the steps of id 0 are masked. Its
    /// gradient is the rows' cotangents summed into the table; the ids have none (zeros in
    /// [`Gradients::x`]).
    Embedding {
        /// `[vocab, dim]`.
        table: Array2<T>,
        /// Id 0 is padding (masked).
        mask_zero: bool,
    },
    /// Any other single-input layer ([`layers::TrainOp`]: pooling, `RepeatVector`,
    /// `Flatten`, `Activation`, `LayerNormalization`, `BatchNormalization`, `Conv1D`, ...,
    /// or the application's own).
    Op(Box<dyn layers::TrainOp<T>>),
    /// `Dense` on the last axis.
    Dense {
        /// `[in, units]`.
        kernel: Array2<T>,
        /// `[units]`.
        bias: Option<Array1<T>>,
        /// Its activation.
        activation: DenseActivation,
        /// Keras's `TimeDistributed(Dense)`: the same values, but the wrapper's reshape
        /// hides a sigmoid's or softmax's logits from the loss, which Keras then computes
        /// from the probabilities (clipped to `[1e-7, 1 - 1e-7]`).
        time_distributed: bool,
    },
}

/// A chain of trainable layers (`Sequential` of Embedding, Masking, LSTM/GRU/SimpleRNN,
/// Bidirectional, Dropout, Dense and [`TrainLayer::Op`] layers).
#[derive(Debug, Clone)]
pub struct Sequential<T> {
    /// The layers with their Keras names.
    pub layers: Vec<(String, TrainLayer<T>)>,
    /// The states the `stateful` recurrent layers carry into their next call, by index
    /// into `layers`: (h, c), `[batch, units]` (a GRU's or SimpleRNN's c unused), what
    /// Keras keeps in `layer.states`. A layer absent starts from zeros. `fit` assigns each
    /// batch's final states, across batches and epochs, as Keras's call does (no gradient
    /// reaches them); [`Sequential::reset_states`] empties it.
    pub carried: std::collections::BTreeMap<usize, (Array2<T>, Array2<T>)>,
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
    /// The seed of the Dropout masks (one stream per optimizer step and layer).
    pub seed: u64,
    /// Recompute mode on the CPU: each recurrent layer keeps only its states every this
    /// many steps and runs each segment's forward again in the backward pass (activation
    /// memory of one segment's tape instead of the whole sequence's, for about one more
    /// forward pass of time); None keeps the whole tape.
    pub recompute: Option<usize>,
}

impl FitOptions {
    /// `loss`, `batch_size`, `epochs` (Dropout seed 0).
    pub fn new(loss: Loss, batch_size: usize, epochs: usize) -> Self {
        FitOptions {
            loss,
            batch_size,
            epochs,
            seed: 0,
            recompute: None,
        }
    }

    /// Sets recompute mode: tapes of `steps` steps at a time ([`FitOptions::recompute`]).
    ///
    /// ```
    /// use lstm_wgpu::train::{FitOptions, Loss};
    /// let o = FitOptions::new(Loss::MeanSquaredError, 8, 1).recompute(64);
    /// assert_eq!(o.recompute, Some(64));
    /// ```
    pub fn recompute(mut self, steps: usize) -> Self {
        self.recompute = Some(steps.max(1));
        self
    }

    /// Sets the seed of the Dropout masks.
    ///
    /// ```
    /// use lstm_wgpu::train::{FitOptions, Loss};
    /// assert_eq!(FitOptions::new(Loss::MeanSquaredError, 8, 1).seed(7).seed, 7);
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
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
    /// dL/dx, the shape of x (zeros for token ids: an Embedding's input has no gradient).
    pub x: ArrayD<T>,
    /// Per weight of `weights`: for those TensorFlow gives as `IndexedSlices` (an Embedding
    /// table's, one slice per looked-up token), per element the sum over the slices of their
    /// squares, which Keras's optimizers use for `g²`
    /// ([`Optimizer::apply_views_sparse`]); None for dense gradients.
    pub sparse_squares: Vec<Option<ArrayD<T>>>,
}

/// A dropout rate `key` of layer `name`'s config (0 when absent), in `[0, 1)`, or an error
/// naming it.
pub(crate) fn unit_rate(cfg: &serde_json::Value, key: &str, name: &str) -> Result<f64> {
    let rate = cfg
        .get(key)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    if (0.0..1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(LstmError::bad_config(
            format!("{key} of layer {name}"),
            format!("{rate} is not in [0, 1)"),
        ))
    }
}

/// `x` as `[B, T, C]`, or an error naming the layer `name` whose input it is.
pub(crate) fn three<'a, T>(
    x: ndarray::ArrayViewD<'a, T>,
    name: &str,
) -> Result<ndarray::ArrayView3<'a, T>> {
    let shape = x.shape().to_vec();
    x.into_dimensionality::<ndarray::Ix3>()
        .map_err(|_| LstmError::shape(format!("input of layer {name}"), &[0, 0, 0], &shape))
}

/// `got` against `want`, array for array: the count, then each shape (`{what} {k}`).
pub(crate) fn check_shapes(what: &str, want: &[&[usize]], got: &[&[usize]]) -> Result<()> {
    if want.len() != got.len() {
        return Err(LstmError::invalid(
            what,
            format!("expected {} arrays, got {}", want.len(), got.len()),
        ));
    }
    for (k, (w, g)) in want.iter().zip(got).enumerate() {
        if w != g {
            return Err(LstmError::shape(format!("{what} {k}"), w, g));
        }
    }
    Ok(())
}
