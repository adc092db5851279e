//! [`GpuNetwork`]: a network's weights on the GPU, its cached plans and carried state, and
//! the public calls (forward, forward_async, step, profiling, memory).

mod build;
mod run;

use super::context::GpuContext;
use super::exec::{is_mapped, MapSlot};
use super::plan::{BufferPool, GpuModel, Plan, PlanKey, RecurrentKernel, StateBuffers};
use super::stats::{ForwardProfile, ForwardStats};
use crate::error::{LstmError, Result};
use crate::model::ModelInput;
use crate::validate::{check_inputs, check_state};
use ndarray::{Array2, ArrayD, ArrayView2, ArrayView3, ArrayViewD};
use std::sync::Arc;

/// A [`Network`](crate::Network) on the GPU: a recurrent layer (LSTM, GRU, SimpleRNN), a
/// Bidirectional one or a stack, or a loaded Keras model, run as one submission.
///
/// ```no_run
/// use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
/// use lstm_wgpu::{LayerConfig, LstmConfig, Network};
/// let ctx = GpuContext::new()?;
/// let config = LayerConfig::Lstm(LstmConfig::new(64).return_sequences(true));
/// let cpu = Network::<f32>::random(&config, 32, 0)?;
/// let mut gpu = GpuNetwork::new(ctx, &cpu)?;
/// let x = ndarray::Array3::<f32>::zeros((8, 100, 32));
/// let outputs = gpu.forward(x.view(), None, None)?;
/// assert_eq!(outputs[0].shape(), &[8, 100, 64]);
/// assert_eq!(gpu.stats().submits, 1);
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
pub struct GpuNetwork {
    pub(super) model: GpuModel,
    /// Plans per shape (see `PlanKey`), built on first use; the most recently used last, at
    /// most `plan_capacity` of them.
    pub(super) plans: Vec<(PlanKey, Plan)>,
    pub(super) plan_capacity: usize,
    /// The working buffers the plans share.
    pub(super) pool: BufferPool,
    /// Outputs of a forward that ran before `forward_async` returned (batch-chunked).
    pub(super) ready: Option<(Vec<ArrayD<f32>>, ForwardStats)>,
    /// A submitted forward whose outputs have not been read yet.
    pub(super) pending: Option<Pending>,
    pub(super) states: Option<StateBuffers>,
    /// Whether `states` holds a carried state (false before the first call and after a reset).
    pub(super) state_valid: bool,
    /// Which kernel runs the time loops.
    pub(super) kernel_choice: RecurrentKernel,
    /// Record timestamps (when the adapter can).
    pub(super) profiling: bool,
    pub(super) profile: Option<ForwardProfile>,
    pub(super) stats: ForwardStats,
    /// Outputs fed back into inputs on the GPU, `(output, input)`, for the forward being
    /// submitted (see `forward_fed`); empty for every other forward.
    pub(super) feedback: Vec<(usize, usize)>,
    /// The plan whose fed inputs hold the outputs of its last forward.
    pub(super) fed_plan: Option<PlanKey>,
}

/// A submitted forward: where its outputs will be and what it cost so far.
pub(super) struct Pending {
    pub(super) key: PlanKey,
    /// Set by the map callback when the outputs are readable.
    pub(super) mapped: MapSlot,
    pub(super) stats: ForwardStats,
    pub(super) started: std::time::Instant,
    pub(super) submitted: std::time::Instant,
}

/// A forward that has been submitted to the GPU and not read back yet: the application can do
/// its own work meanwhile, then [`wait`](PendingForward::wait) for the outputs.
///
/// ```no_run
/// # use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
/// # use lstm_wgpu::{LayerConfig, LstmConfig, Network};
/// # let net = Network::<f32>::random(&LayerConfig::Lstm(LstmConfig::new(8)), 4, 0)?;
/// let mut gpu = GpuNetwork::new(GpuContext::new()?, &net)?;
/// let x = ndarray::Array3::<f32>::zeros((2, 50, 4));
/// let pending = gpu.forward_async(x.view(), None, None)?;
/// // ... the application's own work, while the GPU runs ...
/// let outputs = pending.wait()?;
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
#[must_use = "the outputs are read by wait()"]
pub struct PendingForward<'a> {
    net: &'a mut GpuNetwork,
}

impl PendingForward<'_> {
    /// Whether the GPU has finished (checks without blocking).
    pub fn is_ready(&self) -> bool {
        let _ = self.net.model.ctx.device().poll(wgpu::PollType::Poll);
        self.net
            .pending
            .as_ref()
            .is_some_and(|p| is_mapped(&p.mapped))
    }

    /// Waits for the GPU and returns the outputs, as [`GpuNetwork::forward`] does.
    pub fn wait(self) -> Result<Vec<ArrayD<f32>>> {
        self.net.finish()
    }
}

impl std::fmt::Debug for GpuNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuNetwork")
            .field("adapter", &self.model.ctx.adapter_info().name)
            .field("stages", &self.model.stages)
            .field("nodes", &self.model.nodes)
            .finish()
    }
}

pub(super) fn float64_error() -> LstmError {
    LstmError::UnsupportedOnPath {
        what: "float64".into(),
        path: "gpu".into(),
        hint: "float64 layers run on the CPU path (Network<f64>); convert the weights to f32 \
               to use the GPU"
            .into(),
    }
}

impl GpuNetwork {
    /// The context this network runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.model.ctx
    }

    /// The statistics of the last forward.
    pub fn stats(&self) -> ForwardStats {
        self.stats
    }

    /// Device memory this network holds now, in bytes: the weights, the carried states, the
    /// working buffers the cached plans share (sized for the largest shape seen since they
    /// were last dropped, see [`GpuNetwork::clear_plans`]) and each cached plan's parameter
    /// blocks. Each buffer is counted once.
    ///
    /// ```no_run
    /// # use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
    /// # use lstm_wgpu::{LayerConfig, LstmConfig, Network};
    /// # let net = Network::<f32>::random(&LayerConfig::Lstm(LstmConfig::new(8)), 4, 0)?;
    /// let mut gpu = GpuNetwork::new(GpuContext::new()?, &net)?;
    /// let weights = gpu.gpu_bytes();
    /// gpu.forward(ndarray::Array3::zeros((2, 30, 4)).view(), None, None)?;
    /// assert!(gpu.gpu_bytes() > weights);
    /// gpu.clear_plans();
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn gpu_bytes(&self) -> u64 {
        // (a few dozen buffers: a list, and wgpu::Buffer compares by identity)
        let mut seen: Vec<&wgpu::Buffer> = Vec::new();
        for b in self
            .pool
            .slots
            .values()
            .chain(self.plans.iter().flat_map(|(_, p)| p.held.iter()))
        {
            if !seen.contains(&b) {
                seen.push(b);
            }
        }
        let working: u64 = seen.iter().map(|b| b.size()).sum();
        self.model.weight_bytes + working + self.states.as_ref().map_or(0, |s| s.bytes)
    }

    /// How many shapes (batch, timesteps, mask or not) keep their plan (bind groups and
    /// parameter blocks) between calls; the least recently used is dropped past that.
    /// Default [`DEFAULT_PLAN_CAPACITY`](super::DEFAULT_PLAN_CAPACITY); at least 1.
    ///
    /// ```no_run
    /// # use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
    /// # use lstm_wgpu::{LayerConfig, LstmConfig, Network};
    /// # let net = Network::<f32>::random(&LayerConfig::Lstm(LstmConfig::new(8)), 4, 0)?;
    /// let mut gpu = GpuNetwork::new(GpuContext::new()?, &net)?;
    /// gpu.set_plan_capacity(16)?; // an application that cycles through 16 shapes
    /// assert!(gpu.set_plan_capacity(0).is_err());
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn set_plan_capacity(&mut self, shapes: usize) -> Result<()> {
        if shapes == 0 {
            return Err(LstmError::invalid(
                "shapes",
                "the plan cache holds at least 1 shape (the one running)",
            ));
        }
        self.finish_pending();
        self.plan_capacity = shapes;
        let excess = self.plans.len().saturating_sub(shapes);
        self.plans.drain(..excess);
        Ok(())
    }

    /// Drops every cached plan and the working buffers they share, keeping the weights and
    /// the carried state of stateful layers: the next forward plans its shape anew.
    pub fn clear_plans(&mut self) {
        self.finish_pending();
        self.plans.clear();
        self.pool = BufferPool::default();
    }

    /// Reads (and drops) the outputs of a forward_async nobody waited for.
    pub(super) fn finish_pending(&mut self) {
        if self.pending.is_some() {
            let _ = self.finish();
        }
        self.ready = None;
    }

    pub(super) fn plan(&self, key: &PlanKey) -> Option<&Plan> {
        self.plans.iter().find(|(k, _)| k == key).map(|(_, p)| p)
    }

    /// [`GpuNetwork::forward_inputs`] with outputs fed back into inputs on the GPU: for each
    /// `(k, j)` of `feedback`, output `k` of this forward is copied into input `j`'s buffer
    /// after the pass, and the next `forward_fed` of the same shapes reads it there instead
    /// of uploading `inputs[j]` (whose shape still counts). `restart` uploads every input
    /// (the first call of a loop). A decoding loop's states stay on the GPU this way.
    pub(crate) fn forward_fed(
        &mut self,
        inputs: &[ModelInput],
        feedback: &[(usize, usize)],
        restart: bool,
    ) -> Result<Vec<ArrayD<f32>>> {
        if restart {
            self.fed_plan = None;
        }
        self.feedback = feedback.to_vec();
        let out = self.forward_inputs(inputs);
        self.feedback.clear();
        if out.is_err() {
            self.fed_plan = None;
        }
        out
    }

    /// Each model input's name and dims after the batch axis (`None`: free).
    pub(crate) fn input_dims(&self) -> Vec<(&str, &[Option<usize>])> {
        self.model
            .inputs
            .iter()
            .map(|i| (i.name.as_str(), i.dims.as_slice()))
            .collect()
    }

    /// The input width I (of the first input).
    pub fn input_dim(&self) -> usize {
        self.model
            .inputs
            .first()
            .and_then(|i| i.dims.last().copied().flatten())
            .unwrap_or(0)
    }

    /// Chooses the kernel that runs the time loops (see [`RecurrentKernel`]; default `Auto`).
    ///
    /// ```no_run
    /// # use lstm_wgpu::gpu::{GpuContext, GpuNetwork, RecurrentKernel};
    /// # use lstm_wgpu::{LayerConfig, LstmConfig, Network};
    /// # let net = Network::<f32>::random(&LayerConfig::Lstm(LstmConfig::new(8)), 4, 0)?;
    /// let mut gpu = GpuNetwork::new(GpuContext::new()?, &net)?;
    /// gpu.set_recurrent_kernel(RecurrentKernel::PerStep); // one dispatch per timestep, always
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn set_recurrent_kernel(&mut self, kernel: RecurrentKernel) {
        self.finish_pending();
        self.kernel_choice = kernel;
        self.plans.clear();
    }

    /// Turns timestamp profiling on or off. When on, and the adapter has
    /// `TIMESTAMP_QUERY_INSIDE_PASSES`, each forward records where its time went
    /// ([`GpuNetwork::profile`]); the timestamps travel in the same readback.
    pub fn set_profiling(&mut self, on: bool) {
        self.finish_pending();
        self.profiling = on;
        self.plans.clear();
    }

    /// The last forward's time breakdown, when profiling was on and the adapter supports it.
    pub fn profile(&self) -> Option<ForwardProfile> {
        self.profile
    }

    pub(super) fn can_profile(&self) -> bool {
        self.profiling
            && self.model.ctx.features().contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            )
    }

    /// Zeroes the carried state of stateful layers (applied at the next forward).
    pub fn reset_states(&mut self) {
        self.state_valid = false;
    }

    pub(super) fn stateful(&self) -> bool {
        self.model.directions().iter().any(|d| d.stateful)
    }

    /// Runs the network on `x [B, T, I]`, exactly as [`Network::forward`](crate::Network::forward) does on the CPU, and
    /// returns Keras's outputs in return order.
    pub fn forward(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<Vec<ArrayD<f32>>> {
        self.submit(&[x.into_dyn()], initial_state, mask)?;
        self.finish()
    }

    /// [`crate::model::KerasModel::generate`] on the GPU: one submission and one readback
    /// (the next-token distribution) per generated token, the weights staying on the GPU.
    ///
    /// ```no_run
    /// use lstm_wgpu::generate::Sampler;
    /// use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
    /// use lstm_wgpu::model::KerasModel;
    /// let model = KerasModel::load("char_lstm.keras".as_ref())?;
    /// let mut gpu = GpuNetwork::from_model(GpuContext::new()?, &model)?;
    /// let tokens = gpu.generate(&[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], 100, &mut Sampler::greedy())?;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn generate(
        &mut self,
        seed: &[i64],
        steps: usize,
        sampler: &mut crate::generate::Sampler,
    ) -> Result<Vec<i64>> {
        let window = crate::generate::token_window(&self.input_dims(), seed)?;
        let next = |w: &[i64]| -> Result<Vec<f32>> {
            let out = self.forward_inputs(&[crate::generate::window_input(w)?])?;
            crate::generate::last_distribution(&out[0])
        };
        crate::generate::generate(next, seed, window, steps, sampler)
    }

    /// Runs a model of several inputs (or of one input of any rank, such as token ids):
    /// `inputs` in the model's input order ([`KerasModel::inputs`](crate::model::KerasModel::inputs)),
    /// float or integer (token ids, checked against the vocabulary of the Embedding layers
    /// reading them). Returns the model's outputs in its output order, from one submission.
    ///
    /// ```no_run
    /// use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
    /// use lstm_wgpu::model::{KerasModel, ModelInput};
    /// let model = KerasModel::load("encoder_decoder.keras".as_ref())?;
    /// let mut gpu = GpuNetwork::from_model(GpuContext::new()?, &model)?;
    /// let encoder = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 8, 4]));
    /// let decoder = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 6, 3]));
    /// let outputs = gpu.forward_inputs(&[encoder.into(), decoder.into()])?;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn forward_inputs(&mut self, inputs: &[ModelInput]) -> Result<Vec<ArrayD<f32>>> {
        let xs = self.float_inputs(inputs)?;
        let views: Vec<ArrayViewD<f32>> = xs.iter().map(|x| x.view()).collect();
        self.submit(&views, None, None)?;
        self.finish()
    }

    /// [`GpuNetwork::forward_inputs`] with each output paired with its name, as
    /// [`KerasModel::predict_named`](crate::model::KerasModel::predict_named) pairs them
    /// (the producing layer's name; several outputs of one layer share it).
    ///
    /// ```no_run
    /// # use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
    /// # use lstm_wgpu::model::KerasModel;
    /// # let model = KerasModel::load("m.keras".as_ref())?;
    /// let mut gpu = GpuNetwork::from_model(GpuContext::new()?, &model)?;
    /// # let x = ndarray::Array3::<f32>::zeros((1, 4, 3)).into_dyn();
    /// let outputs = gpu.forward_named(&[x.into()])?;
    /// let dense = &outputs.iter().find(|(name, _)| name == "dense").unwrap().1;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn forward_named(&mut self, inputs: &[ModelInput]) -> Result<Vec<(String, ArrayD<f32>)>> {
        let outputs = self.forward_inputs(inputs)?;
        let names = &self.model.output_names;
        if names.len() == outputs.len() {
            return Ok(names.iter().cloned().zip(outputs).collect());
        }
        // (a Sequential model's last layer may return several tensors under one name)
        let name = names.first().cloned().unwrap_or_default();
        Ok(outputs.into_iter().map(|o| (name.clone(), o)).collect())
    }

    /// The inputs as floats: float inputs borrowed, token ids converted (after checking the
    /// dtype against the model's, and that ids are exact in float32, below 2^24; `check`
    /// checks them against the vocabulary with the shapes).
    fn float_inputs<'i>(
        &self,
        inputs: &'i [ModelInput],
    ) -> Result<Vec<std::borrow::Cow<'i, ArrayD<f32>>>> {
        let specs = &self.model.inputs;
        inputs
            .iter()
            .enumerate()
            .map(|(k, x)| {
                let name = specs.get(k).map_or("x", |s| s.name.as_str());
                if let Some(spec) = specs.get(k) {
                    // (integers for a float input are cast exactly, as on the CPU path)
                    if spec.integer && !x.is_integer() {
                        return Err(LstmError::invalid(
                            format!("input {name}"),
                            "the model takes integers here, got floats",
                        ));
                    }
                }
                match x {
                    ModelInput::F32(a) => Ok(std::borrow::Cow::Borrowed(a)),
                    ModelInput::I64(a) => {
                        for &v in a {
                            if v.unsigned_abs() >= 1 << 24 {
                                return Err(LstmError::invalid(
                                    format!("input {name}"),
                                    format!(
                                        "integer {v} is not exact as a float32 (the GPU's \
                                         inputs are float32)"
                                    ),
                                ));
                            }
                        }
                        Ok(std::borrow::Cow::Owned(a.mapv(|v| v as f32)))
                    }
                }
            })
            .collect()
    }

    /// Submits a forward and returns before the GPU finishes; [`PendingForward::wait`] reads
    /// the outputs. The same contract as [`GpuNetwork::forward`].
    pub fn forward_async(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<PendingForward<'_>> {
        self.submit(&[x.into_dyn()], initial_state, mask)?;
        Ok(PendingForward { net: self })
    }

    /// One timestep of a stateful network: `x_t [B, I]` in, the step's output `[B, W]` out
    /// (W = units, or the merged width of a Bidirectional layer). The state stays on the GPU
    /// between calls: a call is a forward over a one-step sequence. For LSTM layers and
    /// stacks of them, T calls give the same outputs as one forward over the T steps. A
    /// stateful `Bidirectional` layer is different, as in Keras: each call runs its backward
    /// layer over that call's steps only, so T calls equal T one-step forwards of the CPU
    /// network (`Network::forward` on `[B, 1, I]`), not one forward over T steps.
    ///
    /// ```no_run
    /// # use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
    /// # use lstm_wgpu::{LayerConfig, LstmConfig, Network};
    /// let config = LayerConfig::Lstm(LstmConfig::new(16).stateful(true));
    /// let mut gpu = GpuNetwork::new(GpuContext::new()?, &Network::<f32>::random(&config, 4, 0)?)?;
    /// let x_t = ndarray::Array2::<f32>::zeros((1, 4));
    /// let y_t = gpu.step(x_t.view())?; // [1, 16]
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn step(&mut self, x_t: ArrayView2<f32>) -> Result<Array2<f32>> {
        if let Some(d) = self.model.directions().into_iter().find(|d| !d.stateful) {
            return Err(LstmError::invalid(
                "step",
                format!(
                    "layer {} is not stateful: a step call needs every LSTM stateful",
                    d.name
                ),
            ));
        }
        let (b, i) = x_t.dim();
        let x_t = x_t.as_standard_layout();
        let x = x_t
            .view()
            .into_shape_with_order((b, 1, i))
            .map_err(|_| LstmError::invalid("x_t", "must be a standard-layout [B, I] array"))?;
        let first = self.forward(x, None, None)?.swap_remove(0);
        let width = *first.shape().last().expect("outputs are at least 2-D");
        first
            .into_shape_with_order((b, width))
            .map_err(|_| LstmError::invalid("step", "the output is not one step wide"))
    }

    /// Checks the inputs (count, rank, the fixed axes, one batch), the mask and the initial
    /// states; returns the batch.
    pub(super) fn check(
        &self,
        xs: &[ArrayViewD<f32>],
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<usize> {
        let specs = &self.model.inputs;
        if xs.len() != specs.len() {
            let names: Vec<&str> = specs.iter().map(|i| i.name.as_str()).collect();
            return Err(LstmError::invalid(
                "inputs",
                format!(
                    "the model takes {} inputs {names:?}, got {}",
                    names.len(),
                    xs.len()
                ),
            ));
        }
        let one_sequence = specs.len() == 1
            && specs[0].dims.len() == 2
            && specs[0].dims[1].is_some()
            && xs[0].ndim() == 3;
        let dims = if one_sequence {
            let x3 = xs[0]
                .view()
                .into_dimensionality::<ndarray::Ix3>()
                .map_err(|_| LstmError::invalid("x", "must be [B, T, I]"))?;
            check_inputs(specs[0].dims[1].unwrap_or(0), x3, mask)?
        } else {
            if mask.is_some() {
                return Err(LstmError::invalid(
                    "mask",
                    "a mask is taken by models of one sequence input [B, T, I]; this model's \
                     masks come from its own layers",
                ));
            }
            let batch = xs[0].shape().first().copied().unwrap_or(0);
            for (x, spec) in xs.iter().zip(specs) {
                let want: Vec<String> = std::iter::once("B".to_string())
                    .chain(
                        spec.dims
                            .iter()
                            .map(|d| d.map_or("None".into(), |v| v.to_string())),
                    )
                    .collect();
                let fits = x.ndim() == spec.dims.len() + 1
                    && x.shape()[0] == batch
                    && spec
                        .dims
                        .iter()
                        .zip(&x.shape()[1..])
                        .all(|(d, &n)| d.is_none_or(|d| d == n));
                if !fits || x.is_empty() {
                    return Err(LstmError::invalid(
                        format!("input {}", spec.name),
                        format!(
                            "has shape {:?}; the model takes [{}] (B = {batch}, the first \
                             input's batch), with no empty axis",
                            x.shape(),
                            want.join(", ")
                        ),
                    ));
                }
            }
            (batch, 0, 0)
        };
        // Token ids against the vocabulary of the Embedding layers reading them.
        for (x, spec) in xs.iter().zip(specs) {
            if let Some(vocab) = spec.vocabulary {
                if let Some(v) = x
                    .iter()
                    .find(|&&v| !(v >= 0.0 && (v as f64) < vocab as f64 && v.fract() == 0.0))
                {
                    return Err(LstmError::invalid(
                        format!("input {}", spec.name),
                        format!("token id {v} is not in 0..{vocab}"),
                    ));
                }
            }
        }
        if let Some(init) = initial_state {
            // The one recurrent layer call, which reads no state from the graph.
            let recurrent: Vec<_> = self
                .model
                .nodes
                .iter()
                .filter(|n| !self.model.stages[n.stage].directions().is_empty())
                .collect();
            let dirs = match recurrent[..] {
                [n] if n.states.is_empty() && n.inputs.len() == 1 => {
                    self.model.stages[n.stage].directions()
                }
                _ => Vec::new(),
            };
            if dirs.is_empty() || dirs.len() > 2 {
                return Err(LstmError::invalid(
                    "initial_state",
                    format!(
                        "initial states go to a network's one recurrent (or Bidirectional) \
                         layer call that takes none from the graph; this one has {} recurrent \
                         calls (a Sequential stack takes none)",
                        recurrent.len()
                    ),
                ));
            }
            // [h0, c0] or [h0] per direction, forward first.
            let mut expected = Vec::new();
            for (k, d) in dirs.iter().enumerate() {
                for name in d.cell.state_names() {
                    let name = match (dirs.len(), k) {
                        (1, _) => name.to_string(),
                        (_, 0) => name.replace('0', "_fwd"),
                        _ => name.replace('0', "_bwd"),
                    };
                    expected.push((name, d.units));
                }
            }
            if init.len() != expected.len() {
                let names: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
                return Err(LstmError::invalid(
                    "initial_state",
                    format!(
                        "expected {} tensors {names:?}, got {}",
                        expected.len(),
                        init.len()
                    ),
                ));
            }
            for ((name, units), s) in expected.iter().zip(init) {
                check_state(name, *s, dims.0, *units)?;
            }
        }
        Ok(dims.0)
    }

    pub(super) fn create_states(&self, batch: usize) -> Result<StateBuffers> {
        let units: Vec<usize> = self.model.directions().iter().map(|d| d.units).collect();
        StateBuffers::new(&self.model.ctx, batch, &units)
    }
}
