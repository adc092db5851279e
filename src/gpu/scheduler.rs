//! The host-side scheduler: uploads a network's weights once (reordered for the kernels: the
//! input kernel with each projection thread's four columns side by side, the recurrent kernel
//! as a texture of four-gate texels; see `projection_order` and `gates_side_by_side`), builds
//! per-shape plans (buffers, bind groups, per-step parameters baked into a
//! uniform buffer addressed with dynamic offsets), and runs a whole forward as one command
//! encoder, one compute pass, one submission and one readback.

use super::context::GpuContext;
use super::kernels::{Kernel, Kernels, StepKey};
use super::loops;
use super::params::{
    DenseParams, MaskParams, MergeParams, ProjParams, SeqParams, StepParams, DENSE_THREADS,
    MASK_THREADS, MERGE_THREADS, PARAMS_SIZE, PERSISTENT_MAX_STATE, PROJECTION_COLUMNS,
    PROJECTION_ROWS, PROJECTION_THREADS, STEP_ROWS, STEP_THREADS,
};
use crate::activation::Activation;
use crate::config::{LstmConfig, MergeMode};
use crate::cpu::Lstm;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::model::{DenseActivation, KerasModel, ModelLayer};
use crate::network::Network;
use crate::output::{LstmOutput, LstmState};
use crate::validate::{check_inputs, check_state};
use ndarray::{Array2, ArrayD, ArrayView2, ArrayView3, IxDyn};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// What one forward cost: the figures a test or a benchmark checks the schedule with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Compute dispatches recorded.
    pub dispatches: u32,
    /// Queue submissions.
    pub submits: u32,
    /// Buffer maps (readbacks).
    pub readbacks: u32,
    /// Bytes written from the host (inputs, states, and per-shape parameters when a plan was
    /// built by this forward).
    pub bytes_uploaded: u64,
    /// Bytes read back to the host.
    pub bytes_read_back: u64,
    /// Input projections recorded, summed over the recurrent layers and their directions:
    /// one per direction (a Bidirectional layer has two, a stack one per layer), more where
    /// one direction's projection for all timesteps exceeds the binding limit and is split
    /// into chunks of timesteps.
    pub projection_chunks: u32,
    /// Submissions of batch rows the forward was split into because a buffer exceeded the
    /// adapter's binding limit (0 when the whole batch ran at once).
    pub batch_chunks: u32,
    /// GPU buffers created by this forward (0 when the shape's plan was reused).
    pub buffers_created: u32,
}

/// Where the time of one forward went, from GPU timestamp queries (projection, steps, merge)
/// and host clocks (upload, waiting, readback). Recorded when profiling is on
/// ([`GpuNetwork::set_profiling`]) and the adapter has timestamp queries inside passes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ForwardProfile {
    /// Host: writing x, mask and states, and recording the commands.
    pub upload_s: f64,
    /// GPU: the projection dispatches.
    pub projection_s: f64,
    /// GPU: the recurrent dispatches (per-step or whole-sequence).
    pub steps_s: f64,
    /// GPU: Bidirectional merges.
    pub merge_s: f64,
    /// Host: from submit until the outputs were mapped.
    pub wait_s: f64,
    /// Host: copying the mapped outputs into arrays.
    pub readback_s: f64,
}

/// What each timestamp closes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Start,
    Projection,
    Steps,
    Merge,
}

/// Timestamp queries of a profiled plan.
struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    phases: Vec<Phase>,
    /// Byte offset of the timestamps in the staging buffer.
    offset: u64,
}

/// How many shapes keep their plan by default ([`GpuNetwork::set_plan_capacity`]).
pub const DEFAULT_PLAN_CAPACITY: usize = 4;

/// Which kernel runs the time loop of a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecurrentKernel {
    /// The whole-sequence kernel where it measured faster, else one dispatch per timestep.
    /// Measured on lavapipe (2 cores, 1,000 steps, side by side): at batch 1 it is 1.3-3x
    /// faster for H = 32 to 256 and 1.1-1.4x slower for H = 512 and 1024; at larger batches
    /// it is about even at B·H = 128 and slower above (B = 2, H = 128: 1.2-1.6x slower). So:
    /// batch 1 with H ≤ 256, or B·H ≤ 128. (Before the kernel respected the driver's loop
    /// limit, its timings were of a loop cut short, and this rule was wider.) Not yet
    /// measured on a hardware GPU.
    #[default]
    Auto,
    /// One dispatch per timestep (`step.wgsl`), always.
    PerStep,
    /// The time loop in one workgroup (`sequence.wgsl`) wherever it fits (B·H ≤
    /// [`PERSISTENT_MAX_STATE`]), else per step. It runs as one dispatch per projection
    /// chunk, or as several where the adapter stops long loops
    /// ([`GpuContext::loop_limit`](super::GpuContext::loop_limit)): each dispatch then
    /// covers as many timesteps as fit within half that limit.
    WholeSequence,
}

impl RecurrentKernel {
    fn whole_sequence(self, batch: usize, units: usize) -> bool {
        let fits = batch * units <= PERSISTENT_MAX_STATE;
        match self {
            RecurrentKernel::Auto => fits && ((batch == 1 && units <= 256) || batch * units <= 128),
            RecurrentKernel::PerStep => false,
            RecurrentKernel::WholeSequence => fits,
        }
    }
}

/// One LSTM direction's weights on the GPU.
struct DirWeights {
    config: LstmConfig,
    input_dim: usize,
    kernel: wgpu::Buffer,
    /// The recurrent kernel as a texture of `H x H` texels, texel (j, k) holding unit j's
    /// four gates for row k (see `recurrent_texture`).
    recurrent: wgpu::TextureView,
    bias: Option<wgpu::Buffer>,
}

/// A layer of the flattened network.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Lstm(usize),
    Bidi {
        fwd: usize,
        bwd: usize,
        mode: MergeMode,
    },
    /// Keras `Masking` (models).
    Mask(f32),
    /// Keras `Dense`: index into `GpuNetwork::denses` (models).
    Dense(usize),
}

impl Stage {
    /// The LSTM directions of a recurrent stage.
    fn dirs(&self) -> Vec<usize> {
        match *self {
            Stage::Lstm(d) => vec![d],
            Stage::Bidi { fwd, bwd, .. } => vec![fwd, bwd],
            Stage::Mask(_) | Stage::Dense(_) => vec![],
        }
    }
}

/// A Dense layer's weights on the GPU.
struct DenseWeights {
    kernel: wgpu::Buffer,
    bias: Option<wgpu::Buffer>,
    inputs: usize,
    units: usize,
    /// Activation id, or None for softmax; linear needs no dispatch.
    activation: Option<Activation>,
}

/// The dispatches of a Masking or Dense stage.
struct ExtraPlan {
    /// (pipeline, bind group, dynamic offsets, workgroups x, workgroups y)
    dispatches: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, Vec<u32>, u32, u32)>,
}

/// One projection chunk of a direction and the recurrent dispatches that consume it.
struct ChunkPlan {
    /// The projection's parameter offset and workgroups (x, y).
    projection: (u32, u32, u32),
    /// Parameter offsets of the recurrent dispatches (one per timestep for step.wgsl, one per
    /// run of timesteps for sequence.wgsl).
    recurrent: Vec<u32>,
    /// How many recurrent dispatches of the direction come before this chunk's (which of the
    /// ping-pong state buffers the first one reads).
    first: usize,
}

/// Buffers of one direction for one shape.
struct DirPlan {
    last: wgpu::Buffer,
    seq: Option<wgpu::Buffer>,
    proj_bind: wgpu::BindGroup,
    proj_pipeline: wgpu::ComputePipeline,
    /// Recurrent dispatch n reads state buffer n % 2 and writes the other.
    step_bind: [wgpu::BindGroup; 2],
    step_pipeline: wgpu::ComputePipeline,
    chunks: Vec<ChunkPlan>,
    /// Workgroups (x, y) of each recurrent dispatch.
    step_groups: (u32, u32),
    /// Which state buffer holds the final state.
    final_parity: usize,
}

struct MergePlan {
    out: wgpu::Buffer,
    bind: wgpu::BindGroup,
    pipeline: wgpu::ComputePipeline,
    groups: (u32, u32),
}

/// Where an output lies in the staging buffer.
struct OutSpec {
    offset: usize,
    shape: Vec<usize>,
    cols: Option<Range<usize>>,
}

/// The copies into the staging buffer and where each output lies in it.
#[derive(Default)]
struct Readback {
    copies: Vec<(wgpu::Buffer, u64, u64, u64)>,
    outputs: Vec<OutSpec>,
    floats: usize,
}

impl Readback {
    /// Copies `shape` floats from `buf` at byte `src_off`; each entry of `cols` becomes one
    /// output (a column range of the last axis, or the whole tensor).
    fn add(
        &mut self,
        buf: &wgpu::Buffer,
        src_off: u64,
        shape: Vec<usize>,
        cols: Vec<Option<Range<usize>>>,
    ) {
        let n: usize = shape.iter().product();
        let offset = self.floats;
        self.copies
            .push((buf.clone(), src_off, (offset * 4) as u64, (n * 4) as u64));
        for c in cols {
            self.outputs.push(OutSpec {
                offset,
                shape: shape.clone(),
                cols: c,
            });
        }
        self.floats += n;
    }
}

/// The working buffers (inputs, projections, sequences, outputs, readback) shared by every
/// cached plan of a network: a plan asks for its n-th buffer of a kind and size, and gets the
/// pool's buffer of that kind when it is large enough, else a new one (at least twice the old
/// size, so a growing shape reallocates a logarithmic number of times) that replaces it. The
/// kernels bind whole buffers and read only the shape's part (their parameters carry the
/// shape), so one buffer serves every shape that fits it. Plans run one at a time (a forward
/// waits for the one before it), so sharing is safe.
#[derive(Default)]
struct BufferPool {
    slots: HashMap<(String, u32, u32), wgpu::Buffer>,
}

/// Creates a plan's buffers: working buffers from the pool, parameter blocks its own.
struct Allocator<'a> {
    ctx: &'a GpuContext,
    pool: &'a mut BufferPool,
    /// How many buffers of each (label, usage) this plan has asked for so far.
    ordinals: HashMap<(String, u32), u32>,
    /// Every buffer the plan references.
    held: Vec<wgpu::Buffer>,
    /// Buffers created for this plan.
    created: u32,
    params_bytes: u64,
}

impl<'a> Allocator<'a> {
    fn new(ctx: &'a GpuContext, pool: &'a mut BufferPool) -> Self {
        Allocator {
            ctx,
            pool,
            ordinals: HashMap::new(),
            held: Vec::new(),
            created: 0,
            params_bytes: 0,
        }
    }

    fn create(&mut self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.created += 1;
        let buf = self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        self.held.push(buf.clone());
        buf
    }

    /// A working buffer of at least `size` bytes (see [`BufferPool`]).
    fn buffer(&mut self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let size = size.max(4).next_multiple_of(4);
        let n = self
            .ordinals
            .entry((label.to_string(), usage.bits()))
            .or_insert(0);
        let key = (label.to_string(), usage.bits(), *n);
        *n += 1;
        let old = self.pool.slots.get(&key);
        if let Some(b) = old.filter(|b| b.size() >= size) {
            let b = b.clone();
            self.held.push(b.clone());
            return b;
        }
        let limits = self.ctx.limits();
        let max = if usage.contains(wgpu::BufferUsages::STORAGE) {
            limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size)
        } else {
            limits.max_buffer_size
        };
        let grown = old.map_or(size, |b| (2 * b.size()).min(max).max(size));
        let buf = self.create(label, grown, usage);
        self.pool.slots.insert(key, buf.clone());
        buf
    }

    /// A uniform buffer holding `data` (parameter blocks, written once per plan).
    fn uniform(&mut self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
        let buf = self.create(label, (data.len() as u64).max(4), usage);
        self.ctx.queue().write_buffer(&buf, 0, data);
        self.params_bytes += data.len() as u64;
        buf
    }
}

struct Plan {
    x: wgpu::Buffer,
    mask: wgpu::Buffer,
    dirs: Vec<DirPlan>,
    merges: Vec<Option<MergePlan>>,
    extras: Vec<Option<ExtraPlan>>,
    staging: wgpu::Buffer,
    /// Bytes of `staging` this shape reads back.
    staging_size: u64,
    copies: Vec<(wgpu::Buffer, u64, u64, u64)>,
    outputs: Vec<OutSpec>,
    timestamps: Option<Timestamps>,
    /// Every buffer the plan references (pooled working buffers and its own parameters).
    held: Vec<wgpu::Buffer>,
    params_bytes: u64,
    buffers: u32,
}

/// Where the map callback leaves its result.
type MapSlot = Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>>;

/// A plan's shape: batch, timesteps, whether a mask is given, and the batch the kernel choice
/// is made for (the whole batch of a forward that runs in batch chunks, so that every chunk
/// runs the kernel the whole batch would and the outputs are the same bits).
type PlanKey = (usize, usize, bool, usize);

/// A submitted forward: where its outputs will be and what it cost so far.
struct Pending {
    key: PlanKey,
    /// Set by the map callback when the outputs are readable.
    mapped: MapSlot,
    stats: ForwardStats,
    started: std::time::Instant,
    submitted: std::time::Instant,
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
        let _ = self.net.ctx.device().poll(wgpu::PollType::Poll);
        self.net
            .pending
            .as_ref()
            .is_some_and(|p| p.mapped.lock().unwrap_or_else(|e| e.into_inner()).is_some())
    }

    /// Waits for the GPU and returns the outputs, as [`GpuNetwork::forward`] does.
    pub fn wait(self) -> Result<Vec<ArrayD<f32>>> {
        self.net.finish()
    }
}

/// The carried h/c buffers of every direction (ping-pong pair; the state lives in `[0]`
/// between calls).
struct StateBuffers {
    batch: usize,
    dirs: Vec<[wgpu::Buffer; 2]>,
    bytes: u64,
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
    ctx: Arc<GpuContext>,
    kernels: Arc<Kernels>,
    dirs: Vec<DirWeights>,
    stages: Vec<Stage>,
    denses: Vec<DenseWeights>,
    input_dim: usize,
    /// For models: which of the last layer's outputs to return, in order.
    output_select: Option<Vec<usize>>,
    weight_bytes: u64,
    /// Plans per shape (batch, steps, mask given), built on first use; the most recently
    /// used last, at most `plan_capacity` of them.
    plans: Vec<(PlanKey, Plan)>,
    plan_capacity: usize,
    /// The working buffers the plans share.
    pool: BufferPool,
    /// Outputs of a forward that ran before `forward_async` returned (batch-chunked).
    ready: Option<(Vec<ArrayD<f32>>, ForwardStats)>,
    /// A submitted forward whose outputs have not been read yet.
    pending: Option<Pending>,
    states: Option<StateBuffers>,
    /// Whether `states` holds a carried state (false before the first call and after a reset).
    state_valid: bool,
    /// Which kernel runs the time loops.
    kernel_choice: RecurrentKernel,
    /// Record timestamps (when the adapter can).
    profiling: bool,
    profile: Option<ForwardProfile>,
    stats: ForwardStats,
}

impl std::fmt::Debug for GpuNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuNetwork")
            .field("adapter", &self.ctx.adapter_info().name)
            .field("stages", &self.stages)
            .finish()
    }
}

fn float64_error() -> LstmError {
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
        if T::DTYPE != "float32" {
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
    fn assemble(
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
    fn finish_pending(&mut self) {
        if self.pending.is_some() {
            let _ = self.finish();
        }
        self.ready = None;
    }

    fn plan(&self, key: PlanKey) -> Option<&Plan> {
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

    fn can_profile(&self) -> bool {
        self.profiling
            && self.ctx.features().contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            )
    }

    /// Zeroes the carried state of stateful layers (applied at the next forward).
    pub fn reset_states(&mut self) {
        self.state_valid = false;
    }

    fn stateful(&self) -> bool {
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

    /// Submits a forward, in one submission when its buffers fit the adapter's limits, else in
    /// batch chunks (then run to the end before this returns: the outputs wait in `ready`).
    fn submit(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<()> {
        // An earlier forward_async whose outputs were never read.
        self.finish_pending();
        let (batch, _, _) = self.check(x, initial_state, mask)?;
        match self.submit_whole(x, initial_state, mask, batch) {
            Err(LstmError::Limit { need, max, .. }) if batch > 1 && !self.stateful() => {
                let rows = rows_within(batch, need, max);
                let (outputs, stats) = self.forward_in_chunks(x, initial_state, mask, rows)?;
                self.ready = Some((outputs, stats));
                Ok(())
            }
            Err(LstmError::Limit {
                what,
                need,
                max,
                limit,
                ..
            }) if self.stateful() => Err(LstmError::Limit {
                what,
                need,
                max,
                limit,
                hint: "a stateful network keeps one state for its whole batch and cannot run \
                       it in batch chunks: use a smaller batch"
                    .into(),
            }),
            r => r,
        }
    }

    /// Runs the forward over batch rows `[0, rows)`, `[rows, 2·rows)`, ... (one submission
    /// each; fewer rows when a chunk still exceeds a limit) and joins the outputs along the
    /// batch axis. Every row is computed as in a whole-batch forward, so the outputs are the
    /// same bits.
    fn forward_in_chunks(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
        mut rows: usize,
    ) -> Result<(Vec<ArrayD<f32>>, ForwardStats)> {
        use ndarray::{s, Axis};
        let batch = x.dim().0;
        let mut parts: Vec<Vec<ArrayD<f32>>> = Vec::new();
        let mut total = ForwardStats::default();
        let mut r0 = 0;
        while r0 < batch {
            if rows == 0 {
                return Err(self.one_row_error(x, initial_state, mask));
            }
            let r1 = (r0 + rows).min(batch);
            let init: Option<Vec<ArrayView2<f32>>> =
                initial_state.map(|i| i.iter().map(|a| a.slice(s![r0..r1, ..])).collect());
            let run = self
                .submit_whole(
                    x.slice(s![r0..r1, .., ..]),
                    init.as_deref(),
                    mask.map(|m| m.slice_move(s![r0..r1, ..])),
                    batch,
                )
                .and_then(|()| self.finish());
            match run {
                Ok(out) => {
                    let st = self.stats;
                    total.dispatches += st.dispatches;
                    total.submits += st.submits;
                    total.readbacks += st.readbacks;
                    total.bytes_uploaded += st.bytes_uploaded;
                    total.bytes_read_back += st.bytes_read_back;
                    total.projection_chunks += st.projection_chunks;
                    total.buffers_created += st.buffers_created;
                    total.batch_chunks += 1;
                    parts.push(out);
                    r0 = r1;
                }
                Err(LstmError::Limit { need, max, .. }) => {
                    rows = rows_within(r1 - r0, need, max).min(rows - 1);
                }
                Err(e) => return Err(e),
            }
        }
        log::debug!(
            "batch {batch} ran in {} submissions of up to {rows} rows",
            parts.len()
        );
        let outputs = (0..parts[0].len())
            .map(|k| {
                let views: Vec<_> = parts.iter().map(|p| p[k].view()).collect();
                ndarray::concatenate(Axis(0), &views)
                    .map_err(|e| LstmError::invalid("outputs", format!("joining chunks: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((outputs, total))
    }

    /// The limit error of a forward whose one batch row does not fit.
    fn one_row_error(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> LstmError {
        use ndarray::s;
        let init: Option<Vec<ArrayView2<f32>>> =
            initial_state.map(|i| i.iter().map(|a| a.slice(s![0..1, ..])).collect());
        let mask = mask.map(|m| m.slice_move(s![0..1, ..]));
        let batch = x.dim().0;
        match self.submit_whole(x.slice(s![0..1, .., ..]), init.as_deref(), mask, batch) {
            Err(LstmError::Limit {
                what,
                need,
                max,
                limit,
                ..
            }) => LstmError::Limit {
                what,
                need,
                max,
                limit,
                hint: "even one batch row exceeds it: use fewer timesteps per call (a \
                       stateful layer carries the state across calls) or the CPU path"
                    .into(),
            },
            Err(e) => e,
            Ok(()) => {
                let _ = self.finish();
                LstmError::invalid("x", "batch chunking found no chunk size that fits")
            }
        }
    }

    /// Submits the forward of the whole batch `x` as one submission, with the recurrent
    /// kernels chosen for a batch of `choice_batch` rows.
    fn submit_whole(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<&[ArrayView2<f32>]>,
        mask: Option<ArrayView2<bool>>,
        choice_batch: usize,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let (batch, steps, _) = self.check(x, initial_state, mask)?;
        let mut stats = ForwardStats {
            submits: 1,
            readbacks: 1,
            ..Default::default()
        };
        if self.stateful() {
            if let Some(s) = &self.states {
                if s.batch != batch {
                    return Err(LstmError::StatefulBatchChanged {
                        expected: s.batch,
                        actual: batch,
                    });
                }
            }
        }
        if self.states.as_ref().is_none_or(|s| s.batch != batch) {
            self.states = None;
            self.plans.clear();
            let states = self.create_states(batch)?;
            stats.buffers_created += 2 * self.dirs.len() as u32;
            self.states = Some(states);
            self.state_valid = false;
        }
        let key = (batch, steps, mask.is_some(), choice_batch);
        match self.plans.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                let entry = self.plans.remove(i);
                self.plans.push(entry);
            }
            None => {
                let plan = self.build_plan(key)?;
                stats.bytes_uploaded += plan.params_bytes;
                stats.buffers_created += plan.buffers;
                if self.plans.len() >= self.plan_capacity {
                    self.plans.remove(0);
                }
                self.plans.push((key, plan));
            }
        }
        let plan = &self.plans.last().expect("the plan was just placed").1;
        let states = self.states.as_ref().expect("states were just built");
        let queue = self.ctx.queue();

        // Uploads: x, mask, initial states.
        let x_std = x.as_standard_layout();
        let x_bytes: &[u8] = bytemuck::cast_slice(x_std.as_slice().expect("standard layout"));
        queue.write_buffer(&plan.x, 0, x_bytes);
        stats.bytes_uploaded += x_bytes.len() as u64;
        if let Some(m) = mask {
            let words: Vec<u32> = m.iter().map(|&v| u32::from(v)).collect();
            queue.write_buffer(&plan.mask, 0, bytemuck::cast_slice(&words));
            stats.bytes_uploaded += 4 * words.len() as u64;
        }
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("lstm forward"),
                });
        let carry = self.stateful() && self.state_valid;
        match initial_state {
            Some(init) => {
                // [h0, c0] per direction of the single stage.
                for (d, pair) in init.chunks(2).enumerate() {
                    let h: Vec<f32> = pair[0].iter().copied().collect();
                    let c: Vec<f32> = pair[1].iter().copied().collect();
                    let bh = (4 * h.len()) as u64;
                    queue.write_buffer(&states.dirs[d][0], 0, bytemuck::cast_slice(&h));
                    queue.write_buffer(&states.dirs[d][0], bh, bytemuck::cast_slice(&c));
                    stats.bytes_uploaded += 2 * bh;
                }
            }
            None if carry => {}
            None => {
                for pair in &states.dirs {
                    encoder.clear_buffer(&pair[0], 0, None);
                }
            }
        }
        for d in &plan.dirs {
            encoder.clear_buffer(&d.last, 0, None);
        }

        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("lstm forward"),
                timestamp_writes: None,
            });
            let mut stamp = 0u32;
            let mut mark = |pass: &mut wgpu::ComputePass<'_>| {
                if let Some(ts) = &plan.timestamps {
                    pass.write_timestamp(&ts.set, stamp);
                    stamp += 1;
                }
            };
            mark(&mut pass);
            for (k, stage) in self.stages.iter().enumerate() {
                for d in stage.dirs() {
                    let dp = &plan.dirs[d];
                    for chunk in &dp.chunks {
                        let (offset, gx, gy) = chunk.projection;
                        pass.set_pipeline(&dp.proj_pipeline);
                        pass.set_bind_group(0, &dp.proj_bind, &[offset]);
                        pass.dispatch_workgroups(gx, gy, 1);
                        stats.dispatches += 1;
                        mark(&mut pass);
                        pass.set_pipeline(&dp.step_pipeline);
                        for (n, offset) in chunk.recurrent.iter().enumerate() {
                            let parity = (chunk.first + n) % 2;
                            pass.set_bind_group(0, &dp.step_bind[parity], &[*offset]);
                            pass.dispatch_workgroups(dp.step_groups.0, dp.step_groups.1, 1);
                            stats.dispatches += 1;
                        }
                        mark(&mut pass);
                    }
                    stats.projection_chunks += dp.chunks.len() as u32;
                }
                if let Some(m) = &plan.merges[k] {
                    pass.set_pipeline(&m.pipeline);
                    pass.set_bind_group(0, &m.bind, &[]);
                    pass.dispatch_workgroups(m.groups.0, m.groups.1, 1);
                    stats.dispatches += 1;
                    mark(&mut pass);
                }
                if let Some(e) = &plan.extras[k] {
                    for (pipeline, bind, offsets, gx, gy) in &e.dispatches {
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, bind, offsets);
                        pass.dispatch_workgroups(*gx, *gy, 1);
                        stats.dispatches += 1;
                    }
                }
            }
        }
        for (src, src_off, dst_off, size) in &plan.copies {
            encoder.copy_buffer_to_buffer(src, *src_off, &plan.staging, *dst_off, *size);
        }
        if let Some(ts) = &plan.timestamps {
            let n = ts.phases.len() as u32;
            encoder.resolve_query_set(&ts.set, 0..n, &ts.resolve, 0);
            encoder.copy_buffer_to_buffer(&ts.resolve, 0, &plan.staging, ts.offset, None);
        }
        if self.stateful() {
            // Keep the carried state in buffer [0] of each pair for the next call.
            for (d, dp) in plan.dirs.iter().enumerate() {
                if dp.final_parity == 1 {
                    let pair = &states.dirs[d];
                    encoder.copy_buffer_to_buffer(&pair[1], 0, &pair[0], 0, None);
                }
            }
        }
        let ctx = self.ctx.clone();
        let submitted = std::time::Instant::now();
        ctx.checked("recording the forward", || {
            queue.submit([encoder.finish()]);
        })?;
        let slot: MapSlot = Arc::new(Mutex::new(None));
        let callback_slot = slot.clone();
        plan.staging
            .map_async(wgpu::MapMode::Read, ..plan.staging_size, move |r| {
                *callback_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        stats.bytes_read_back = plan.staging_size;
        self.state_valid = self.stateful();
        self.pending = Some(Pending {
            key,
            mapped: slot,
            stats,
            started,
            submitted,
        });
        Ok(())
    }

    /// Waits for the submitted forward and reads its outputs.
    fn finish(&mut self) -> Result<Vec<ArrayD<f32>>> {
        if let Some((outputs, stats)) = self.ready.take() {
            self.stats = stats;
            return Ok(outputs);
        }
        let pending = self
            .pending
            .take()
            .ok_or_else(|| LstmError::invalid("forward", "no forward was submitted"))?;
        let plan = self
            .plan(pending.key)
            .expect("a pending forward's plan stays cached until it is read");
        let data = wait_and_read(&self.ctx, &plan.staging, plan.staging_size, &pending.mapped)?;
        let mapped = std::time::Instant::now();
        let outputs = plan
            .outputs
            .iter()
            .map(|o| {
                let n: usize = o.shape.iter().product();
                let values: Vec<f32> =
                    bytemuck::pod_collect_to_vec(&data[o.offset * 4..(o.offset + n) * 4]);
                let a = ArrayD::from_shape_vec(IxDyn(&o.shape), values)
                    .expect("staging layout matches the output shape");
                match &o.cols {
                    None => a,
                    Some(r) => {
                        let last = a.ndim() - 1;
                        a.slice_axis(ndarray::Axis(last), r.clone().into())
                            .to_owned()
                    }
                }
            })
            .collect();
        let queue = self.ctx.queue();
        self.profile = plan.timestamps.as_ref().map(|ts| {
            let period = f64::from(queue.get_timestamp_period()) * 1e-9;
            let start = ts.offset as usize;
            let ticks: Vec<u64> =
                bytemuck::pod_collect_to_vec(&data[start..start + 8 * ts.phases.len()]);
            let mut p = ForwardProfile {
                upload_s: (pending.submitted - pending.started).as_secs_f64(),
                wait_s: (mapped - pending.submitted).as_secs_f64(),
                readback_s: mapped.elapsed().as_secs_f64(),
                ..Default::default()
            };
            for (k, phase) in ts.phases.iter().enumerate().skip(1) {
                let dt = ticks[k].saturating_sub(ticks[k - 1]) as f64 * period;
                match phase {
                    Phase::Projection => p.projection_s += dt,
                    Phase::Steps => p.steps_s += dt,
                    Phase::Merge => p.merge_s += dt,
                    Phase::Start => {}
                }
            }
            p
        });
        self.stats = pending.stats;
        match &self.output_select {
            None => Ok(outputs),
            Some(select) => {
                let mut outputs: Vec<Option<ArrayD<f32>>> = outputs.into_iter().map(Some).collect();
                select
                    .iter()
                    .map(|&k| {
                        outputs.get_mut(k).and_then(Option::take).ok_or_else(|| {
                            LstmError::invalid("model outputs", format!("no output {k}"))
                        })
                    })
                    .collect()
            }
        }
    }

    fn check(
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

    fn create_states(&self, batch: usize) -> Result<StateBuffers> {
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

    fn max_binding(&self) -> u64 {
        let l = self.ctx.limits();
        l.max_storage_buffer_binding_size.min(l.max_buffer_size)
    }

    fn check_binding(&self, what: &str, size: u64) -> Result<()> {
        let max = self.max_binding();
        if size > max {
            return Err(limit_error(
                what,
                size,
                max,
                "max_storage_buffer_binding_size",
            ));
        }
        Ok(())
    }

    fn build_plan(&mut self, key: PlanKey) -> Result<Plan> {
        let ctx = self.ctx.clone();
        let mut pool = std::mem::take(&mut self.pool);
        let plan = ctx.checked("building the forward plan", || {
            self.build_plan_inner(key, &mut pool)
        });
        self.pool = pool;
        plan?
    }

    fn build_plan_inner(
        &self,
        (batch, steps, has_mask, choice_batch): PlanKey,
        pool: &mut BufferPool,
    ) -> Result<Plan> {
        let device = self.ctx.device();
        let limits = self.ctx.limits();
        let max_groups = limits.max_compute_workgroups_per_dimension as usize;
        let stride = (PARAMS_SIZE as u32)
            .next_multiple_of(limits.min_uniform_buffer_offset_alignment)
            as usize;
        let mut alloc = Allocator::new(&self.ctx, pool);
        let storage = wgpu::BufferUsages::STORAGE;
        let input_dim = self.input_dim;
        let x_size = (batch * steps * input_dim * 4) as u64;
        self.check_binding("x", x_size)?;
        let x = alloc.buffer("x", x_size, storage | wgpu::BufferUsages::COPY_DST);
        let masking = self.stages.iter().any(|s| matches!(s, Stage::Mask(_)));
        let mask_size = if has_mask || masking {
            (batch * steps * 4) as u64
        } else {
            4
        };
        self.check_binding("mask", mask_size)?;
        let mask = alloc.buffer("mask", mask_size, storage | wgpu::BufferUsages::COPY_DST);
        let dummy = alloc.buffer("unused", 4, storage);
        // The unused vec4 views (bindings read only, so a buffer of their own: `dummy` can be
        // bound read-write in the same dispatch).
        let dummy_vec4 = alloc.buffer("unused vec4 view", 16, storage);
        let loop_cap = self.ctx.loop_limit()?;
        let loop_budget = loops::budget(loop_cap);
        let states = self
            .states
            .as_ref()
            .expect("states are created before the plan");

        let mut dir_plans: Vec<Option<DirPlan>> = (0..self.dirs.len()).map(|_| None).collect();
        let mut merges = Vec::new();
        let mut extras: Vec<Option<ExtraPlan>> = Vec::new();
        // The buffer each stage reads its input from, and that input's width.
        let mut input: (wgpu::Buffer, usize) = (x.clone(), input_dim);
        // Whether a mask applies to the next recurrent stage, and the rows per batch row of
        // the current tensor (T, or 1 after a layer that returns its last output only).
        let mut mask_on = has_mask;
        let mut t_rows = steps;
        for stage in &self.stages {
            let dirs = stage.dirs();
            if !dirs.is_empty() && t_rows != steps {
                return Err(LstmError::invalid(
                    "model",
                    "a recurrent layer after a layer that returns only its last output",
                ));
            }
            for &d in &dirs {
                let w = &self.dirs[d];
                let h = w.config.units;
                let n = 4 * h;
                // Projection chunks: as many timesteps as fit the binding limit and the
                // dispatch limit.
                let per_step = (batch * n * 4) as u64;
                let by_bytes = (self.max_binding() / per_step) as usize;
                // The projection covers PROJECTION_ROWS rows per workgroup (y) and
                // PROJECTION_COLUMNS
                // columns (x).
                let by_groups = max_groups * PROJECTION_ROWS / batch;
                let tc_max = by_bytes.min(by_groups).min(steps);
                if by_bytes == 0 {
                    return Err(limit_error(
                        &format!("one timestep's input projection of {}", w.config.name),
                        per_step,
                        self.max_binding(),
                        "max_storage_buffer_binding_size",
                    ));
                }
                if tc_max == 0 {
                    return Err(LstmError::invalid(
                        "x",
                        format!("batch {batch} exceeds the adapter's dispatch limit"),
                    ));
                }
                let nchunks = steps.div_ceil(tc_max);
                let tc = steps.div_ceil(nchunks);
                let proj = alloc.buffer("projection", tc as u64 * per_step, storage);
                let seq_needed = w.config.return_sequences;
                let seq_size = (batch * steps * h * 4) as u64;
                if seq_needed {
                    self.check_binding("output sequence", seq_size)?;
                }
                let seq = seq_needed.then(|| {
                    alloc.buffer("sequence", seq_size, storage | wgpu::BufferUsages::COPY_SRC)
                });
                let last = alloc.buffer(
                    "last output",
                    (batch * h * 4) as u64,
                    storage | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                );
                // Per-chunk and per-step parameters, baked once for this shape.
                let mut params: Vec<u8> = Vec::new();
                let mut push = |bytes: &[u8]| {
                    let off = params.len();
                    params.extend_from_slice(bytes);
                    params.resize(off + stride, 0);
                    off as u32
                };
                // The whole-sequence kernel where chosen and where at least one timestep fits
                // the adapter's loop budget; it then runs `per_dispatch` timesteps a dispatch.
                let chosen = self.kernel_choice.whole_sequence(choice_batch, h);
                let per_dispatch = if chosen && batch * h <= PERSISTENT_MAX_STATE {
                    loops::sequence_steps_per_dispatch(batch, h, loop_budget)
                } else {
                    0
                };
                let whole_sequence = per_dispatch > 0;
                if !whole_sequence {
                    loops::check(
                        &format!("LSTM layer {} ({h} units)", w.config.name),
                        loops::step_iterations(h),
                        loop_budget,
                        loop_cap,
                    )?;
                }
                loops::check(
                    &format!("LSTM layer {} ({} inputs)", w.config.name, w.input_dim),
                    loops::projection_iterations(w.input_dim),
                    loop_budget,
                    loop_cap,
                )?;
                let mut chunks = Vec::new();
                let mut dispatched = 0;
                for c in 0..nchunks {
                    let (s0, s1) = (c * tc, ((c + 1) * tc).min(steps));
                    let len = s1 - s0;
                    let t_lo = if w.config.go_backwards {
                        steps - s1
                    } else {
                        s0
                    };
                    let off = push(bytemuck::bytes_of(&ProjParams {
                        rows: (batch * len) as u32,
                        k: w.input_dim as u32,
                        n: n as u32,
                        tc: len as u32,
                        seq_len: steps as u32,
                        t_lo: t_lo as u32,
                        has_bias: u32::from(w.bias.is_some()),
                        _pad: 0,
                    }));
                    let gx = n.div_ceil(PROJECTION_COLUMNS) as u32;
                    let gy = (batch * len).div_ceil(PROJECTION_ROWS) as u32;
                    let mut recurrent = Vec::new();
                    if whole_sequence {
                        for a in (s0..s1).step_by(per_dispatch) {
                            recurrent.push(push(bytemuck::bytes_of(&SeqParams {
                                batch: batch as u32,
                                units: h as u32,
                                tc: len as u32,
                                t_lo: t_lo as u32,
                                s_begin: a as u32,
                                s_end: (a + per_dispatch).min(s1) as u32,
                                seq_len: steps as u32,
                                go_backwards: u32::from(w.config.go_backwards),
                            })));
                        }
                    } else {
                        for s in s0..s1 {
                            let t = if w.config.go_backwards {
                                steps - 1 - s
                            } else {
                                s
                            };
                            recurrent.push(push(bytemuck::bytes_of(&StepParams {
                                batch: batch as u32,
                                units: h as u32,
                                tc: len as u32,
                                t_local: (t - t_lo) as u32,
                                t_abs: t as u32,
                                s_out: s as u32,
                                seq_len: steps as u32,
                                _pad: 0,
                            })));
                        }
                    }
                    let first = dispatched;
                    dispatched += recurrent.len();
                    chunks.push(ChunkPlan {
                        projection: (off, gx, gy),
                        recurrent,
                        first,
                    });
                }
                let params_buf = alloc.uniform("parameters", &params);
                let uniform = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &params_buf,
                    offset: 0,
                    size: wgpu::BufferSize::new(PARAMS_SIZE),
                });
                let proj_bind = projection_bind_group(
                    device,
                    self.kernels.layout(Kernel::Projection),
                    "projection",
                    uniform.clone(),
                    (&input.0, w.input_dim),
                    &w.kernel,
                    w.bias.as_ref(),
                    &proj,
                    (&dummy, &dummy_vec4),
                );
                let pair = &states.dirs[d];
                let step_bind = [0usize, 1].map(|p| {
                    device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("step"),
                        layout: self.kernels.layout(Kernel::Step),
                        entries: &[
                            entry(0, uniform.clone()),
                            entry(1, wgpu::BindingResource::TextureView(&w.recurrent)),
                            entry(2, proj.as_entire_binding()),
                            entry(3, mask.as_entire_binding()),
                            entry(4, pair[p].as_entire_binding()),
                            entry(5, pair[1 - p].as_entire_binding()),
                            entry(6, last.as_entire_binding()),
                            entry(7, seq.as_ref().unwrap_or(&dummy).as_entire_binding()),
                            // state_in as vec4s (step.wgsl reads it only when H % 4 == 0)
                            entry(
                                8,
                                if h.is_multiple_of(4) {
                                    &pair[p]
                                } else {
                                    &dummy_vec4
                                }
                                .as_entire_binding(),
                            ),
                        ],
                    })
                });
                let step_pipeline = self.kernels.step(
                    device,
                    StepKey {
                        activation: w.config.activation,
                        recurrent_activation: w.config.recurrent_activation,
                        zero_output_for_mask: w.config.zero_output_for_mask,
                        has_mask: mask_on,
                        write_sequence: seq_needed,
                        whole_sequence,
                    },
                )?;
                let step_groups = if whole_sequence {
                    (1, 1)
                } else {
                    (h.div_ceil(STEP_THREADS), batch.div_ceil(STEP_ROWS))
                };
                if step_groups.0 > max_groups || step_groups.1 > max_groups {
                    return Err(LstmError::invalid(
                        "x",
                        format!("batch {batch} x {h} units exceeds the adapter's dispatch limit"),
                    ));
                }
                dir_plans[d] = Some(DirPlan {
                    last,
                    seq,
                    proj_bind,
                    proj_pipeline: self.kernels.pipeline(device, Kernel::Projection, &[])?,
                    step_bind,
                    step_pipeline,
                    chunks,
                    step_groups: (step_groups.0 as u32, step_groups.1 as u32),
                    final_parity: dispatched % 2,
                });
            }
            // This stage's output buffer (input of the next stage).
            match *stage {
                Stage::Lstm(d) => {
                    let dp = dir_plans[d].as_ref().expect("planned above");
                    let h = self.dirs[d].config.units;
                    input = (dp.seq.clone().unwrap_or_else(|| dp.last.clone()), h);
                    merges.push(None);
                    extras.push(None);
                    if !self.dirs[d].config.return_sequences {
                        mask_on = false;
                        t_rows = 1;
                    }
                }
                Stage::Mask(value) => {
                    let width = input.1;
                    self.check_binding("Masking output", (batch * steps * width * 4) as u64)?;
                    loops::check(
                        &format!("Masking layer ({width} features)"),
                        loops::mask_iterations(width),
                        loop_budget,
                        loop_cap,
                    )?;
                    let out = alloc.buffer(
                        "masked",
                        (batch * steps * width * 4) as u64,
                        storage | wgpu::BufferUsages::COPY_SRC,
                    );
                    let mp = MaskParams {
                        batch: batch as u32,
                        steps: steps as u32,
                        width: width as u32,
                        value,
                        ..bytemuck::Zeroable::zeroed()
                    };
                    let params = alloc.uniform("mask parameters", bytemuck::bytes_of(&mp));
                    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("mask"),
                        layout: self.kernels.layout(Kernel::Mask),
                        entries: &[
                            entry(0, params.as_entire_binding()),
                            entry(1, input.0.as_entire_binding()),
                            entry(2, mask.as_entire_binding()),
                            entry(3, out.as_entire_binding()),
                        ],
                    });
                    let (gx, gy) = grid(batch * steps, MASK_THREADS, max_groups)?;
                    extras.push(Some(ExtraPlan {
                        dispatches: vec![(
                            self.kernels.pipeline(device, Kernel::Mask, &[])?,
                            bind,
                            vec![],
                            gx,
                            gy,
                        )],
                    }));
                    merges.push(None);
                    input = (out, width);
                    mask_on = true;
                }
                Stage::Dense(i) => {
                    let dw = &self.denses[i];
                    if input.1 != dw.inputs {
                        return Err(LstmError::shape(
                            "Dense kernel",
                            &[input.1, dw.units],
                            &[dw.inputs, dw.units],
                        ));
                    }
                    let what = format!("Dense layer ({} inputs, {} units)", dw.inputs, dw.units);
                    loops::check(
                        &what,
                        loops::projection_iterations(dw.inputs)
                            .max(loops::dense_iterations(dw.units, dw.activation.is_none())),
                        loop_budget,
                        loop_cap,
                    )?;
                    let rows = batch * t_rows;
                    let out_size = (rows * dw.units * 4) as u64;
                    self.check_binding("Dense output", out_size)?;
                    let out =
                        alloc.buffer("dense", out_size, storage | wgpu::BufferUsages::COPY_SRC);
                    let pp = ProjParams {
                        rows: rows as u32,
                        k: dw.inputs as u32,
                        n: dw.units as u32,
                        tc: t_rows as u32,
                        seq_len: t_rows as u32,
                        t_lo: 0,
                        has_bias: u32::from(dw.bias.is_some()),
                        _pad: 0,
                    };
                    let params = alloc.uniform("dense parameters", bytemuck::bytes_of(&pp));
                    let uniform = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: 0,
                        size: wgpu::BufferSize::new(PARAMS_SIZE),
                    });
                    let bind = projection_bind_group(
                        device,
                        self.kernels.layout(Kernel::Projection),
                        "dense",
                        uniform,
                        (&input.0, dw.inputs),
                        &dw.kernel,
                        dw.bias.as_ref(),
                        &out,
                        (&dummy, &dummy_vec4),
                    );
                    let (gx, gy) = (
                        dw.units.div_ceil(PROJECTION_COLUMNS),
                        rows.div_ceil(PROJECTION_ROWS),
                    );
                    if gx > max_groups || gy > max_groups {
                        return Err(LstmError::invalid(
                            "x",
                            "the Dense layer's rows exceed the adapter's dispatch limit",
                        ));
                    }
                    let mut dispatches = vec![(
                        self.kernels.pipeline(device, Kernel::Projection, &[])?,
                        bind,
                        vec![0],
                        gx as u32,
                        gy as u32,
                    )];
                    if dw.activation != Some(Activation::Linear) {
                        let dp = DenseParams {
                            rows: rows as u32,
                            n: dw.units as u32,
                            ..bytemuck::Zeroable::zeroed()
                        };
                        let act_params =
                            alloc.uniform("dense activation parameters", bytemuck::bytes_of(&dp));
                        let act_bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("dense activation"),
                            layout: self.kernels.layout(Kernel::Dense),
                            entries: &[
                                entry(0, act_params.as_entire_binding()),
                                entry(1, out.as_entire_binding()),
                            ],
                        });
                        let pipeline = self.kernels.dense(device, dw.activation)?;
                        let (ax, ay) = grid(rows, DENSE_THREADS, max_groups)?;
                        dispatches.push((pipeline, act_bind, vec![], ax, ay));
                    }
                    extras.push(Some(ExtraPlan { dispatches }));
                    merges.push(None);
                    input = (out, dw.units);
                }
                Stage::Bidi { fwd, bwd, mode } => {
                    let (f, b) = (&self.dirs[fwd], &self.dirs[bwd]);
                    let (hf, hb) = (f.config.units, b.config.units);
                    let seqs = f.config.return_sequences;
                    let t_out = if seqs { steps } else { 1 };
                    let width = match mode {
                        MergeMode::Concat | MergeMode::None => hf + hb,
                        _ => hf,
                    };
                    let out_size = (batch * t_out * width * 4) as u64;
                    self.check_binding("merged output", out_size)?;
                    let out =
                        alloc.buffer("merged", out_size, storage | wgpu::BufferUsages::COPY_SRC);
                    let (fp, bp) = (
                        dir_plans[fwd].as_ref().expect("planned above"),
                        dir_plans[bwd].as_ref().expect("planned above"),
                    );
                    let src = |p: &DirPlan| p.seq.clone().unwrap_or_else(|| p.last.clone());
                    let mp = MergeParams {
                        batch: batch as u32,
                        steps: t_out as u32,
                        units_fwd: hf as u32,
                        units_bwd: hb as u32,
                        flip: u32::from(seqs),
                        width: width as u32,
                        _pad0: 0,
                        _pad1: 0,
                    };
                    let params_buf = alloc.uniform("merge parameters", bytemuck::bytes_of(&mp));
                    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("merge"),
                        layout: self.kernels.layout(Kernel::Merge),
                        entries: &[
                            wgpu::BindGroupEntry {
                                binding: 0,
                                resource: params_buf.as_entire_binding(),
                            },
                            wgpu::BindGroupEntry {
                                binding: 1,
                                resource: src(fp).as_entire_binding(),
                            },
                            wgpu::BindGroupEntry {
                                binding: 2,
                                resource: src(bp).as_entire_binding(),
                            },
                            wgpu::BindGroupEntry {
                                binding: 3,
                                resource: out.as_entire_binding(),
                            },
                        ],
                    });
                    let (gx, gy) = grid(batch * t_out * width, MERGE_THREADS, max_groups)?;
                    merges.push(Some(MergePlan {
                        out: out.clone(),
                        bind,
                        pipeline: self.kernels.merge(device, mode)?,
                        groups: (gx, gy),
                    }));
                    input = (out, width);
                    extras.push(None);
                    if !seqs {
                        mask_on = false;
                        t_rows = 1;
                    }
                }
            }
        }
        let dirs: Vec<DirPlan> = dir_plans
            .into_iter()
            .map(|d| d.expect("every direction belongs to a stage"))
            .collect();

        // Readback: the last stage's outputs in Keras order, copied into one staging buffer.
        let mut rb = Readback::default();
        let state_outputs = |rb: &mut Readback, d: usize| {
            let h = self.dirs[d].config.units;
            let buf = &states.dirs[d][dirs[d].final_parity];
            rb.add(buf, 0, vec![batch, h], vec![None]);
            rb.add(buf, (batch * h * 4) as u64, vec![batch, h], vec![None]);
        };
        match *self
            .stages
            .last()
            .expect("a network has at least one layer")
        {
            Stage::Lstm(d) => {
                let c = &self.dirs[d].config;
                let dp = &dirs[d];
                match &dp.seq {
                    Some(seq) => rb.add(seq, 0, vec![batch, steps, c.units], vec![None]),
                    None => rb.add(&dp.last, 0, vec![batch, c.units], vec![None]),
                }
                if c.return_state {
                    state_outputs(&mut rb, d);
                }
            }
            Stage::Mask(_) | Stage::Dense(_) => {
                let shape = if t_rows == steps {
                    vec![batch, steps, input.1]
                } else {
                    vec![batch, input.1]
                };
                rb.add(&input.0, 0, shape, vec![None]);
            }
            Stage::Bidi { fwd, bwd, mode } => {
                let (f, b) = (&self.dirs[fwd].config, &self.dirs[bwd].config);
                let m = merges
                    .last()
                    .and_then(|m| m.as_ref())
                    .expect("a Bidi stage merges");
                let width = match mode {
                    MergeMode::Concat | MergeMode::None => f.units + b.units,
                    _ => f.units,
                };
                let shape = if f.return_sequences {
                    vec![batch, steps, width]
                } else {
                    vec![batch, width]
                };
                let cols = if mode == MergeMode::None {
                    vec![Some(0..f.units), Some(f.units..width)]
                } else {
                    vec![None]
                };
                rb.add(&m.out, 0, shape, cols);
                if f.return_state {
                    state_outputs(&mut rb, fwd);
                    state_outputs(&mut rb, bwd);
                }
            }
        }
        let Readback {
            copies,
            outputs,
            floats: offset,
        } = rb;
        let timestamps = if self.can_profile() {
            let mut phases = vec![Phase::Start];
            for (k, stage) in self.stages.iter().enumerate() {
                for d in stage.dirs() {
                    for _ in &dirs[d].chunks {
                        phases.push(Phase::Projection);
                        phases.push(Phase::Steps);
                    }
                }
                if merges[k].is_some() {
                    phases.push(Phase::Merge);
                }
            }
            let n = phases.len() as u32;
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("forward timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: n,
            });
            let resolve = alloc.buffer(
                "timestamps",
                8 * u64::from(n),
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            );
            Some(Timestamps {
                set,
                resolve,
                phases,
                offset: ((offset * 4) as u64).next_multiple_of(8),
            })
        } else {
            None
        };
        let staging_size = match &timestamps {
            Some(ts) => ts.offset + 8 * ts.phases.len() as u64,
            None => (offset * 4) as u64,
        };
        if staging_size > limits.max_buffer_size {
            return Err(limit_error(
                "outputs (readback)",
                staging_size,
                limits.max_buffer_size,
                "max_buffer_size",
            ));
        }
        let staging = alloc.buffer(
            "readback",
            staging_size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        Ok(Plan {
            x,
            mask,
            dirs,
            merges,
            extras,
            staging,
            staging_size,
            copies,
            outputs,
            timestamps,
            params_bytes: alloc.params_bytes,
            buffers: alloc.created,
            held: alloc.held,
        })
    }
}

/// Waits until the map of `staging` (requested at submit) completes and returns its bytes.
fn wait_and_read(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    size: u64,
    slot: &MapSlot,
) -> Result<Vec<u8>> {
    let mapped = loop {
        if let Some(r) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            break r;
        }
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| LstmError::Device {
                message: format!("waiting for the forward: {e}"),
            })?;
    };
    mapped.map_err(|e| LstmError::Device {
        message: format!("mapping the outputs: {e}"),
    })?;
    let data = {
        let view = staging
            .get_mapped_range(..size)
            .map_err(|e| LstmError::Device {
                message: format!("reading the outputs: {e}"),
            })?;
        view.to_vec()
    };
    staging.unmap();
    Ok(data)
}

/// A buffer over an adapter limit (before batch chunking is tried).
fn limit_error(what: &str, need: u64, max: u64, limit: &str) -> LstmError {
    LstmError::Limit {
        what: what.into(),
        need,
        max,
        limit: limit.into(),
        hint: "use a smaller batch or fewer timesteps per call".into(),
    }
}

/// The batch rows that fit a limit of `max` bytes when `rows` rows need `need` (the buffers
/// grow in proportion to the batch).
fn rows_within(rows: usize, need: u64, max: u64) -> usize {
    ((rows as u128 * max as u128) / need.max(1) as u128) as usize
}

/// A 2-D dispatch grid for `items` one-per-thread items in workgroups of `per_group`.
fn grid(items: usize, per_group: usize, max_groups: usize) -> Result<(u32, u32)> {
    let groups = items.div_ceil(per_group).max(1);
    let gx = groups.min(max_groups);
    let gy = groups.div_ceil(gx);
    if gy > max_groups {
        return Err(LstmError::invalid(
            "x",
            "the input exceeds the adapter's dispatch limit",
        ));
    }
    Ok((gx as u32, gy as u32))
}

/// The bind group of projection.wgsl (an LSTM's input projection, or a Dense layer): input
/// `x` of width `k`, kernel, optional bias, output. `dummies` are the unused-binding buffers
/// (the second, 16 bytes, stands in for the vec4 view of x when `k` is not a multiple of 4).
#[allow(clippy::too_many_arguments)]
fn projection_bind_group(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    label: &str,
    params: wgpu::BindingResource<'_>,
    (x, k): (&wgpu::Buffer, usize),
    kernel: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
    (dummy, dummy_vec4): (&wgpu::Buffer, &wgpu::Buffer),
) -> wgpu::BindGroup {
    let x4 = if k.is_multiple_of(4) { x } else { dummy_vec4 };
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &[
            entry(0, params),
            entry(1, x.as_entire_binding()),
            entry(2, kernel.as_entire_binding()),
            entry(3, bias.unwrap_or(dummy).as_entire_binding()),
            entry(4, out.as_entire_binding()),
            // x as vec4s (projection.wgsl reads it only when k % 4 == 0)
            entry(5, x4.as_entire_binding()),
        ],
    })
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

/// The values of `m` in row-major order (Keras's layout, which the kernels read).
fn row_major<T: Element>(m: ArrayView2<T>) -> Vec<f32> {
    m.iter().map(|v| v.to_f64() as f32).collect()
}

/// Uploads `data` into a new storage buffer, checking the binding limit; `name` names the
/// weight in errors.
fn upload_f32(ctx: &GpuContext, name: &str, data: &[f32], bytes: &mut u64) -> Result<wgpu::Buffer> {
    let max = ctx
        .limits()
        .max_storage_buffer_binding_size
        .min(ctx.limits().max_buffer_size);
    let size = (data.len() * 4) as u64;
    if size > max {
        return Err(LstmError::invalid(
            name,
            format!("{size} bytes exceed this adapter's binding limit of {max} bytes"),
        ));
    }
    *bytes += size;
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(name),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue()
        .write_buffer(&buf, 0, bytemuck::cast_slice(data));
    Ok(buf)
}

/// Uploads the recurrent kernel, in the order of [`gates_side_by_side`], as an `H x H`
/// texture of four-float texels. The kernels read it with `textureLoad`: lavapipe builds a
/// texel fetch as a vector gather, where it runs a storage-buffer load as a loop over lanes.
fn recurrent_texture(
    ctx: &GpuContext,
    name: &str,
    data: &[f32],
    units: usize,
    bytes: &mut u64,
) -> Result<wgpu::TextureView> {
    let max = ctx.limits().max_texture_dimension_2d as usize;
    if units > max {
        return Err(LstmError::invalid(
            name,
            format!("{units} units exceed this adapter's texture size limit of {max}"),
        ));
    }
    let size = wgpu::Extent3d {
        width: units as u32,
        height: units as u32,
        depth_or_array_layers: 1,
    };
    let texture = ctx.device().create_texture(&wgpu::TextureDescriptor {
        label: Some(name),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    ctx.queue().write_texture(
        texture.as_image_copy(),
        bytemuck::cast_slice(data),
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some((units * 16) as u32),
            rows_per_image: Some(units as u32),
        },
        size,
    );
    *bytes += (data.len() * 4) as u64;
    Ok(texture.create_view(&wgpu::TextureViewDescriptor::default()))
}

/// Uploads one direction's weights as f32 (exact for an f32 layer; `new` refuses f64 ones).
fn upload_weights<T: Element>(
    ctx: &GpuContext,
    l: &Lstm<T>,
    bytes: &mut u64,
) -> Result<DirWeights> {
    let c = l.config();
    let w = l.weights();
    let name = |what: &str| format!("{}/{what}", c.name);
    ctx.checked("uploading weights", || {
        Ok(DirWeights {
            config: c.clone(),
            input_dim: l.input_dim(),
            kernel: upload_f32(
                ctx,
                &name("kernel"),
                &projection_order(w.kernel.view()),
                bytes,
            )?,
            recurrent: recurrent_texture(
                ctx,
                &name("recurrent_kernel"),
                &gates_side_by_side(w.recurrent_kernel.view()),
                c.units,
                bytes,
            )?,
            bias: match &w.bias {
                Some(b) => Some(upload_f32(
                    ctx,
                    &name("bias"),
                    &row_major(b.view().insert_axis(ndarray::Axis(0))),
                    bytes,
                )?),
                None => None,
            },
        })
    })?
}

/// A `[K, N]` kernel as projection.wgsl reads it: per row k, groups of 256 columns
/// (`PROJECTION_COLUMNS`), each as 64 vec4s (one per thread) holding columns
/// `(c, c + 64, c + 128, c + 192)` for `c = 256·g + x` (zero past
/// N), so each thread's four columns are one vec4.
fn projection_order<T: Element>(m: ndarray::ArrayView2<T>) -> Vec<f32> {
    let (k, n) = m.dim();
    let (cols, threads) = (PROJECTION_COLUMNS, PROJECTION_THREADS);
    let stride = n.div_ceil(cols) * cols;
    let mut out = vec![0.0f32; k * stride];
    for row in 0..k {
        for col in 0..n {
            let (g, q, x) = (col / cols, (col % cols) / threads, col % threads);
            out[row * stride + (g * threads + x) * 4 + q] = m[[row, col]].to_f64() as f32;
        }
    }
    out
}

/// The recurrent kernel `[H, 4H]` (gate blocks i, f, c, o) as step.wgsl and sequence.wgsl
/// read it: `[H][H][4]`, the four gates of unit j for row k at `(k·H + j)·4`.
fn gates_side_by_side<T: Element>(r: ndarray::ArrayView2<T>) -> Vec<f32> {
    let h = r.nrows();
    let mut out = vec![0.0f32; h * 4 * h];
    for k in 0..h {
        for j in 0..h {
            for g in 0..4 {
                out[(k * h + j) * 4 + g] = r[[k, g * h + j]].to_f64() as f32;
            }
        }
    }
    out
}

/// Lists the LSTM directions (in weight order) and the stages of a network.
fn flatten<'a, T: Element>(
    net: &'a Network<T>,
    dirs: &mut dyn FnMut(&'a Lstm<T>),
    stages: &mut Vec<Stage>,
) {
    let count = stages.iter().map(|s| s.dirs().len()).sum::<usize>();
    match net {
        Network::Lstm(l) => {
            dirs(l);
            stages.push(Stage::Lstm(count));
        }
        Network::Bidirectional(b) => {
            dirs(b.forward_layer());
            dirs(b.backward_layer());
            stages.push(Stage::Bidi {
                fwd: count,
                bwd: count + 1,
                mode: b.merge_mode(),
            });
        }
        Network::Sequential(layers) => {
            for l in layers {
                flatten(l, dirs, stages);
            }
        }
    }
}

/// One Keras `LSTM` layer on the GPU, with the CPU layer's interface.
///
/// ```no_run
/// use lstm_wgpu::gpu::{GpuContext, GpuLstm};
/// use lstm_wgpu::{Lstm, LstmConfig, LstmWeights};
/// let config = LstmConfig::new(16).return_state(true);
/// let cpu = Lstm::new(config.clone(), LstmWeights::<f32>::random(&config, 8, 0)?)?;
/// let mut gpu = GpuLstm::new(GpuContext::new()?, &cpu)?;
/// let x = ndarray::Array3::<f32>::ones((4, 10, 8));
/// let out = gpu.forward(x.view(), None, None)?;
/// assert_eq!(out.output.shape(), &[4, 16]);
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
#[derive(Debug)]
pub struct GpuLstm {
    inner: GpuNetwork,
    return_state: bool,
}

impl GpuLstm {
    /// Uploads the layer's weights.
    pub fn new<T: Element>(ctx: Arc<GpuContext>, layer: &Lstm<T>) -> Result<Self> {
        let return_state = layer.config().return_state;
        Ok(GpuLstm {
            inner: GpuNetwork::new(ctx, &Network::Lstm(layer.clone()))?,
            return_state,
        })
    }

    /// Runs the layer; the same contract as [`Lstm::forward`].
    pub fn forward(
        &mut self,
        x: ArrayView3<f32>,
        initial_state: Option<(ArrayView2<f32>, ArrayView2<f32>)>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<LstmOutput<f32>> {
        let init = initial_state.map(|(h, c)| [h, c]);
        let mut outs = self
            .inner
            .forward(x, init.as_ref().map(|a| a.as_slice()), mask)?
            .into_iter();
        let output = outs.next().expect("an LSTM returns its output");
        let state2 = |outs: &mut dyn Iterator<Item = ArrayD<f32>>| -> Array2<f32> {
            outs.next()
                .expect("return_state gives h and c")
                .into_dimensionality()
                .expect("states are 2-D")
        };
        let state = if self.return_state {
            let h = state2(&mut outs);
            let c = state2(&mut outs);
            Some(LstmState { h, c })
        } else {
            None
        };
        Ok(LstmOutput { output, state })
    }

    /// Zeroes the carried state of a stateful layer.
    pub fn reset_states(&mut self) {
        self.inner.reset_states()
    }

    /// See [`GpuNetwork::set_recurrent_kernel`].
    pub fn set_recurrent_kernel(&mut self, kernel: RecurrentKernel) {
        self.inner.set_recurrent_kernel(kernel)
    }

    /// One timestep of a stateful layer; see [`GpuNetwork::step`].
    pub fn step(&mut self, x_t: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.inner.step(x_t)
    }

    /// See [`GpuNetwork::set_profiling`].
    pub fn set_profiling(&mut self, on: bool) {
        self.inner.set_profiling(on)
    }

    /// See [`GpuNetwork::profile`].
    pub fn profile(&self) -> Option<ForwardProfile> {
        self.inner.profile()
    }

    /// The statistics of the last forward.
    pub fn stats(&self) -> ForwardStats {
        self.inner.stats()
    }

    /// Device memory the layer holds.
    pub fn gpu_bytes(&self) -> u64 {
        self.inner.gpu_bytes()
    }
}
