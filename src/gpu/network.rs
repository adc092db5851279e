//! [`GpuNetwork`]: a network's weights on the GPU, its cached plans and carried state, and
//! the public calls (forward, forward_async, step, profiling, memory).

use super::context::GpuContext;
use super::exec::{Pending, PendingForward};
use super::kernels::Kernels;
use super::plan::{BufferPool, Plan, PlanKey, RecurrentKernel, DEFAULT_PLAN_CAPACITY};
use super::stats::{ForwardProfile, ForwardStats};
use super::upload::{
    flatten, projection_order, row_major, upload_f32, upload_weights, DenseWeights, DirWeights,
    Stage,
};
use crate::cpu::Lstm;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::model::{DenseActivation, KerasModel, ModelLayer};
use crate::network::Network;
use crate::validate::{check_inputs, check_state};
use ndarray::{Array2, ArrayD, ArrayView2, ArrayView3};
use std::sync::Arc;

/// The carried h/c buffers of every direction (ping-pong pair; the state lives in `[0]`
/// between calls).
pub(super) struct StateBuffers {
    pub(super) batch: usize,
    pub(super) dirs: Vec<[wgpu::Buffer; 2]>,
    pub(super) bytes: u64,
}

/// A [`Network`] on the GPU: an LSTM, a Bidirectional LSTM or a stack, run as one submission.
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
    pub(super) ctx: Arc<GpuContext>,
    pub(super) kernels: Arc<Kernels>,
    pub(super) dirs: Vec<DirWeights>,
    pub(super) stages: Vec<Stage>,
    pub(super) denses: Vec<DenseWeights>,
    pub(super) input_dim: usize,
    /// For models: which of the last layer's outputs to return, in order.
    pub(super) output_select: Option<Vec<usize>>,
    pub(super) weight_bytes: u64,
    /// Plans per shape (batch, steps, mask given), built on first use; the most recently
    /// used last, at most `plan_capacity` of them.
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
}

impl std::fmt::Debug for GpuNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuNetwork")
            .field("adapter", &self.ctx.adapter_info().name)
            .field("stages", &self.stages)
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
    /// Uploads `network`'s weights to the GPU. Only `f32` networks run on the GPU; an `f64`
    /// network gives an error that says so.
    pub fn new<T: Element>(ctx: Arc<GpuContext>, network: &Network<T>) -> Result<Self> {
        if !T::is_f32() {
            return Err(float64_error());
        }
        let kernels = ctx.kernels()?;
        let mut dirs = Vec::new();
        let mut stages = Vec::new();
        flatten(network, &mut |l: &Lstm<T>| dirs.push(l), &mut stages);
        let mut weight_bytes = 0;
        let dirs: Vec<DirWeights> = dirs
            .into_iter()
            .map(|l| upload_weights(&ctx, l, &mut weight_bytes))
            .collect::<Result<_>>()?;
        let input_dim = network.input_dim();
        Ok(Self::assemble(
            ctx,
            kernels,
            (dirs, stages, Vec::new()),
            input_dim,
            None,
            weight_bytes,
        ))
    }

    /// A network with nothing planned yet.
    pub(super) fn assemble(
        ctx: Arc<GpuContext>,
        kernels: Arc<Kernels>,
        (dirs, stages, denses): (Vec<DirWeights>, Vec<Stage>, Vec<DenseWeights>),
        input_dim: usize,
        output_select: Option<Vec<usize>>,
        weight_bytes: u64,
    ) -> Self {
        GpuNetwork {
            ctx,
            kernels,
            dirs,
            stages,
            denses,
            input_dim,
            output_select,
            weight_bytes,
            plans: Vec::new(),
            plan_capacity: DEFAULT_PLAN_CAPACITY,
            pool: BufferPool::default(),
            ready: None,
            pending: None,
            states: None,
            state_valid: false,
            kernel_choice: RecurrentKernel::Auto,
            profiling: false,
            profile: None,
            stats: ForwardStats::default(),
        }
    }

    /// Uploads a loaded Keras model (Masking, LSTM, Bidirectional and Dense layers) so that
    /// the whole model runs in one submission with one readback; [`GpuNetwork::forward`]
    /// then returns the model's outputs in its output order.
    ///
    /// ```no_run
    /// use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
    /// use lstm_wgpu::model::KerasModel;
    /// let model = KerasModel::load("model.keras".as_ref())?;
    /// let mut gpu = GpuNetwork::from_model(GpuContext::new()?, &model)?;
    /// let x = ndarray::Array3::<f32>::zeros((4, 20, 3));
    /// let predictions = gpu.forward(x.view(), None, None)?;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn from_model(ctx: Arc<GpuContext>, model: &KerasModel) -> Result<Self> {
        let kernels = ctx.kernels()?;
        let mut lstms: Vec<&Lstm<f32>> = Vec::new();
        let mut stages = Vec::new();
        let mut denses = Vec::new();
        let mut weight_bytes = 0;
        let mut input_dim = None;
        for (name, layer) in model.layers() {
            match layer {
                ModelLayer::Masking { mask_value } => stages.push(Stage::Mask(*mask_value)),
                ModelLayer::Recurrent(net) => {
                    input_dim.get_or_insert(net.input_dim());
                    flatten(net, &mut |l: &Lstm<f32>| lstms.push(l), &mut stages);
                }
                ModelLayer::Dense {
                    kernel,
                    bias,
                    activation,
                } => {
                    input_dim.get_or_insert(kernel.nrows());
                    let dense =
                        ctx.checked("uploading weights", || -> Result<DenseWeights> {
                            Ok(DenseWeights {
                                kernel: upload_f32(
                                    &ctx,
                                    &format!("{name}/kernel"),
                                    &projection_order(kernel.view()),
                                    &mut weight_bytes,
                                )?,
                                bias: match bias {
                                    Some(b) => Some(upload_f32(
                                        &ctx,
                                        &format!("{name}/bias"),
                                        &row_major(b.view().insert_axis(ndarray::Axis(0))),
                                        &mut weight_bytes,
                                    )?),
                                    None => None,
                                },
                                inputs: kernel.nrows(),
                                units: kernel.ncols(),
                                activation: match activation {
                                    DenseActivation::Elementwise(a) => Some(*a),
                                    DenseActivation::Softmax => None,
                                },
                            })
                        })??;
                    denses.push(dense);
                    stages.push(Stage::Dense(denses.len() - 1));
                }
            }
        }
        let input_dim =
            input_dim.ok_or_else(|| LstmError::invalid("model", "has no LSTM or Dense layer"))?;
        let dirs = lstms
            .iter()
            .map(|l| upload_weights(&ctx, l, &mut weight_bytes))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::assemble(
            ctx,
            kernels,
            (dirs, stages, denses),
            input_dim,
            Some(model.output_indices().to_vec()),
            weight_bytes,
        ))
    }

    /// The context this network runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
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
        self.weight_bytes + working + self.states.as_ref().map_or(0, |s| s.bytes)
    }

    /// How many shapes (batch, timesteps, mask or not) keep their plan (bind groups and
    /// parameter blocks) between calls; the least recently used is dropped past that.
    /// Default [`DEFAULT_PLAN_CAPACITY`]; at least 1.
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

    pub(super) fn plan(&self, key: PlanKey) -> Option<&Plan> {
        self.plans.iter().find(|(k, _)| *k == key).map(|(_, p)| p)
    }

    /// The input width I.
    pub fn input_dim(&self) -> usize {
        self.input_dim
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
            && self.ctx.features().contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            )
    }

    /// Zeroes the carried state of stateful layers (applied at the next forward).
    pub fn reset_states(&mut self) {
        self.state_valid = false;
    }

    pub(super) fn stateful(&self) -> bool {
        self.dirs.iter().any(|d| d.config.stateful)
    }

    /// Runs the network on `x [B, T, I]`, exactly as [`Network::forward`] does on the CPU, and
    /// returns Keras's outputs in return order.
    pub fn forward(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<Vec<ArrayD<f32>>> {
        self.submit(x, initial_state, mask)?;
        self.finish()
    }

    /// Submits a forward and returns before the GPU finishes; [`PendingForward::wait`] reads
    /// the outputs. The same contract as [`GpuNetwork::forward`].
    pub fn forward_async(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<PendingForward<'_>> {
        self.submit(x, initial_state, mask)?;
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
        if let Some(d) = self.dirs.iter().find(|d| !d.config.stateful) {
            return Err(LstmError::invalid(
                "step",
                format!(
                    "layer {} is not stateful: a step call needs every LSTM stateful",
                    d.config.name
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

    pub(super) fn check(
        &self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<(usize, usize, usize)> {
        let dims = check_inputs(self.input_dim, x, mask)?;
        if let Some(init) = initial_state {
            let (expected, names): (usize, &[&str]) = match self.stages.as_slice() {
                [Stage::Lstm(_)] => (2, &["h0", "c0"]),
                [Stage::Bidi { .. }] => (4, &["h_fwd", "c_fwd", "h_bwd", "c_bwd"]),
                _ => {
                    return Err(LstmError::invalid(
                        "initial_state",
                        "a Sequential stack takes no initial state",
                    ))
                }
            };
            if init.len() != expected {
                return Err(LstmError::invalid(
                    "initial_state",
                    format!("expected {expected} tensors {names:?}, got {}", init.len()),
                ));
            }
            for (k, s) in init.iter().enumerate() {
                check_state(names[k], *s, dims.0, self.dirs[k / 2].config.units)?;
            }
        }
        Ok(dims)
    }

    pub(super) fn create_states(&self, batch: usize) -> Result<StateBuffers> {
        let mut bytes = 0;
        let dirs = self
            .dirs
            .iter()
            .map(|d| {
                let size = (2 * batch * d.config.units * 4) as u64;
                self.check_binding("state (h, c)", size)?;
                Ok([0, 1].map(|k| {
                    bytes += size;
                    self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
                        label: Some(if k == 0 { "state a" } else { "state b" }),
                        size,
                        usage: wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_DST
                            | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    })
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StateBuffers { batch, dirs, bytes })
    }
}
