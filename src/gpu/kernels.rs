//! The kernel registry: the WGSL sources, one bind-group layout per kernel, and one cache of
//! compiled pipelines keyed by (kernel, override constants). Built from a `wgpu::Device`
//! alone; [`GpuContext`](super::GpuContext) keeps one per device.

use super::params::PARAMS_SIZE;
use super::scope::checked;
use crate::activation::Activation;
use crate::config::MergeMode;
use crate::error::Result;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

/// The activation functions shared by the kernels (prepended to their sources).
pub(crate) const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");
/// The input-projection GEMM.
pub(crate) const PROJECTION_WGSL: &str = include_str!("../../shaders/projection.wgsl");
/// The LSTM cell shared by the step and sequence kernels (prepended after the activations).
pub(crate) const CELL_WGSL: &str = include_str!("../../shaders/cell.wgsl");
/// The fused per-timestep kernel (without the prelude).
pub(crate) const STEP_WGSL: &str = include_str!("../../shaders/step.wgsl");
/// The whole-sequence kernel for small layers (without the prelude).
pub(crate) const SEQUENCE_WGSL: &str = include_str!("../../shaders/sequence.wgsl");
/// The Bidirectional merge.
pub(crate) const MERGE_WGSL: &str = include_str!("../../shaders/merge.wgsl");
/// Keras `Masking`.
pub(crate) const MASK_WGSL: &str = include_str!("../../shaders/mask.wgsl");
/// The activation of a `Dense` layer (without the prelude).
pub(crate) const DENSE_WGSL: &str = include_str!("../../shaders/dense.wgsl");

/// Strided copies (RepeatVector, Permute, padding, Concatenate, states).
pub(crate) const GATHER_WGSL: &str = include_str!("../../shaders/gather.wgsl");
/// Value-by-value and row-wise layers of one input (without the prelude).
pub(crate) const UNARY_WGSL: &str = include_str!("../../shaders/unary.wgsl");
/// The merge layers of tensors of one shape (without the prelude).
pub(crate) const BINARY_WGSL: &str = include_str!("../../shaders/binary.wgsl");
/// Keras `Embedding`.
pub(crate) const EMBEDDING_WGSL: &str = include_str!("../../shaders/embedding.wgsl");
/// Layer and batch normalization.
pub(crate) const NORM_WGSL: &str = include_str!("../../shaders/norm.wgsl");
/// Pooling over time.
pub(crate) const POOL_WGSL: &str = include_str!("../../shaders/pool.wgsl");
/// Conv1D and Conv2D, a tiled implicit GEMM (without the prelude).
pub(crate) const CONV_WGSL: &str = include_str!("../../shaders/conv.wgsl");
/// Attention, AdditiveAttention and Dot (without the prelude).
pub(crate) const ATTENTION_WGSL: &str = include_str!("../../shaders/attention.wgsl");
/// MultiHeadAttention's attention over its projections.
pub(crate) const MHA_WGSL: &str = include_str!("../../shaders/mha.wgsl");
/// One ConvLSTM step's cell update (without the prelude).
pub(crate) const CONV_LSTM_WGSL: &str = include_str!("../../shaders/conv_lstm.wgsl");

/// The products of GPU training (without the prelude).
pub(crate) const TRAIN_GEMM_WGSL: &str = include_str!("../../shaders/train_gemm.wgsl");
/// What the training timestep kernels share: layouts, constants, derivatives.
pub(crate) const TRAIN_STEP_WGSL: &str = include_str!("../../shaders/train_step.wgsl");
/// The training forward timestep (after the preludes).
pub(crate) const TRAIN_FORWARD_WGSL: &str = include_str!("../../shaders/train_forward.wgsl");
/// The training backward timestep (after the preludes).
pub(crate) const TRAIN_BACKWARD_WGSL: &str = include_str!("../../shaders/train_backward.wgsl");

/// The complete source of each kernel, as it is compiled: `(name, source)`.
///
/// ```
/// let names: Vec<&str> = lstm_wgpu::gpu::kernel_sources().iter().map(|(n, _)| *n).collect();
/// assert_eq!(
///     names,
///     [
///         "projection", "step", "sequence", "merge", "mask", "dense", "gather", "unary",
///         "binary", "embedding", "norm", "pool", "conv", "attention", "mha", "conv_lstm",
///         "train_gemm", "train_forward", "train_backward"
///     ]
/// );
/// ```
pub fn kernel_sources() -> Vec<(&'static str, String)> {
    vec![
        ("projection", PROJECTION_WGSL.to_string()),
        ("step", format!("{COMMON_WGSL}\n{CELL_WGSL}\n{STEP_WGSL}")),
        (
            "sequence",
            format!("{COMMON_WGSL}\n{CELL_WGSL}\n{SEQUENCE_WGSL}"),
        ),
        ("merge", MERGE_WGSL.to_string()),
        ("mask", MASK_WGSL.to_string()),
        ("dense", format!("{COMMON_WGSL}\n{DENSE_WGSL}")),
        ("gather", GATHER_WGSL.to_string()),
        ("unary", format!("{COMMON_WGSL}\n{UNARY_WGSL}")),
        ("binary", format!("{COMMON_WGSL}\n{BINARY_WGSL}")),
        ("embedding", EMBEDDING_WGSL.to_string()),
        ("norm", NORM_WGSL.to_string()),
        ("pool", POOL_WGSL.to_string()),
        ("conv", format!("{COMMON_WGSL}\n{CONV_WGSL}")),
        ("attention", format!("{COMMON_WGSL}\n{ATTENTION_WGSL}")),
        ("mha", MHA_WGSL.to_string()),
        ("conv_lstm", format!("{COMMON_WGSL}\n{CONV_LSTM_WGSL}")),
        ("train_gemm", TRAIN_GEMM_WGSL.to_string()),
        (
            "train_forward",
            format!("{COMMON_WGSL}\n{TRAIN_STEP_WGSL}\n{TRAIN_FORWARD_WGSL}"),
        ),
        (
            "train_backward",
            format!("{COMMON_WGSL}\n{TRAIN_STEP_WGSL}\n{TRAIN_BACKWARD_WGSL}"),
        ),
    ]
}

/// A compute kernel (one WGSL module, entry point `main`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    Projection,
    Step,
    Sequence,
    Merge,
    Mask,
    Dense,
    Gather,
    Unary,
    Binary,
    Embedding,
    Norm,
    Pool,
    Conv,
    Attention,
    Mha,
    ConvLstm,
    TrainGemm,
    TrainForward,
    TrainBackward,
}

impl Kernel {
    const ALL: [Kernel; 19] = [
        Kernel::Projection,
        Kernel::Step,
        Kernel::Sequence,
        Kernel::Merge,
        Kernel::Mask,
        Kernel::Dense,
        Kernel::Gather,
        Kernel::Unary,
        Kernel::Binary,
        Kernel::Embedding,
        Kernel::Norm,
        Kernel::Pool,
        Kernel::Conv,
        Kernel::Attention,
        Kernel::Mha,
        Kernel::ConvLstm,
        Kernel::TrainGemm,
        Kernel::TrainForward,
        Kernel::TrainBackward,
    ];

    /// Its name in [`kernel_sources`].
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Projection => "projection",
            Kernel::Step => "step",
            Kernel::Sequence => "sequence",
            Kernel::Merge => "merge",
            Kernel::Mask => "mask",
            Kernel::Dense => "dense",
            Kernel::Gather => "gather",
            Kernel::Unary => "unary",
            Kernel::Binary => "binary",
            Kernel::Embedding => "embedding",
            Kernel::Norm => "norm",
            Kernel::Pool => "pool",
            Kernel::Conv => "conv",
            Kernel::Attention => "attention",
            Kernel::Mha => "mha",
            Kernel::ConvLstm => "conv_lstm",
            Kernel::TrainGemm => "train_gemm",
            Kernel::TrainForward => "train_forward",
            Kernel::TrainBackward => "train_backward",
        }
    }

    /// The bindings of its group 0 (binding 0 is always the parameter block).
    fn entries(self) -> Vec<wgpu::BindGroupLayoutEntry> {
        match self {
            // params (dynamic offset: one buffer holds every chunk's), x, kernel, bias, out,
            // x as vec4s
            Kernel::Projection => vec![
                params(true),
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, false),
                storage(5, true),
            ],
            // params (one block per step or run of steps), recurrent texture, proj, mask,
            // state in, state out, last, sequence, state in as vec4s
            Kernel::Step | Kernel::Sequence => vec![
                params(true),
                texture(1),
                storage(2, true),
                storage(3, true),
                storage(4, true),
                storage(5, false),
                storage(6, false),
                storage(7, false),
                storage(8, true),
            ],
            // params, forward, backward, out
            Kernel::Merge => buffers(2, 1),
            // params, x, mask out, out
            Kernel::Mask => buffers(1, 2),
            // params, y (in place)
            Kernel::Dense => buffers(0, 1),
            // params, x, out
            Kernel::Gather => buffers(1, 1),
            // params, x, alpha, out / params, a, b, out / params, x, mask, out
            Kernel::Unary | Kernel::Binary | Kernel::Pool => buffers(2, 1),
            // params, ids, table, out, mask
            Kernel::Embedding => buffers(2, 2),
            // params, x, gamma, beta, mean, variance, out
            Kernel::Norm => buffers(5, 1),
            // params, x, kernel, bias, out
            Kernel::Conv => buffers(3, 1),
            // params, q, k, v, scale, mask, scores, out
            Kernel::Attention => buffers(5, 2),
            // params, q, k, v, query mask, value mask, key mask, scores, out
            Kernel::Mha => buffers(6, 2),
            // params (one block per step), zx, zh, mask, h, c, last, sequence
            Kernel::ConvLstm => vec![
                params(true),
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, false),
                storage(5, false),
                storage(6, false),
                storage(7, false),
            ],
            // params (a block of the call's buffer), a, b, c
            Kernel::TrainGemm => buffers(2, 1),
            // params (one block per step), U and the recurrent bias, proj, mask, state,
            // tape, sequence
            Kernel::TrainForward => vec![
                params(true),
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, false),
                storage(5, false),
                storage(6, false),
            ],
            // params (one block per step), Uᵀ, proj, mask, tape, output cotangent, bstate, dz
            Kernel::TrainBackward => vec![
                params(true),
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, true),
                storage(5, true),
                storage(6, false),
                storage(7, false),
            ],
        }
    }
}

/// The override constants that select a step pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StepKey {
    pub activation: Activation,
    pub recurrent_activation: Activation,
    pub zero_output_for_mask: bool,
    pub has_mask: bool,
    pub write_sequence: bool,
    /// The whole-sequence kernel (sequence.wgsl) instead of the per-step one.
    pub whole_sequence: bool,
    /// The `CELL` constant of cell.wgsl (`CELL_LSTM`, ...) and the cell's gate count.
    pub cell: (u32, u32),
}

/// A pipeline's identity: its kernel and its override constants (values as bits).
type PipelineKey = (Kernel, Vec<(&'static str, u64)>);

/// Every kernel's module and layouts, and the pipelines compiled so far.
pub(crate) struct Kernels {
    modules: HashMap<Kernel, wgpu::ShaderModule>,
    layouts: HashMap<Kernel, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// A whole-buffer parameter block at binding 0, then `read` read-only storage buffers, then
/// `written` read-write ones.
fn buffers(read: u32, written: u32) -> Vec<wgpu::BindGroupLayoutEntry> {
    std::iter::once(params(false))
        .chain((1..=read).map(|b| storage(b, true)))
        .chain((read + 1..=read + written).map(|b| storage(b, false)))
        .collect()
}

/// A 2-D float texture read with `textureLoad` (no sampler, so not filterable).
fn texture(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: false },
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        },
        count: None,
    }
}

fn params(dynamic: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: dynamic,
            // (dynamic blocks are PARAMS_SIZE; a whole-buffer block is its struct's size)
            min_binding_size: if dynamic {
                wgpu::BufferSize::new(PARAMS_SIZE)
            } else {
                None
            },
        },
        count: None,
    }
}

impl Kernels {
    /// Creates every kernel's module and layouts on `device` (pipelines are compiled on
    /// first use).
    pub fn new(device: &wgpu::Device) -> Result<Kernels> {
        checked(device, "creating the kernels", || {
            let sources: HashMap<_, _> = kernel_sources().into_iter().collect();
            let mut modules = HashMap::new();
            let mut layouts = HashMap::new();
            for k in Kernel::ALL {
                let name = k.name();
                modules.insert(
                    k,
                    device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(name),
                        source: wgpu::ShaderSource::Wgsl(Cow::Owned(sources[name].clone())),
                    }),
                );
                let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(name),
                    entries: &k.entries(),
                });
                let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(name),
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
                layouts.insert(k, (bgl, pl));
            }
            Kernels {
                modules,
                layouts,
                pipelines: Mutex::new(HashMap::new()),
            }
        })
    }

    /// The bind-group layout of `kernel`.
    pub fn layout(&self, kernel: Kernel) -> &wgpu::BindGroupLayout {
        &self.layouts[&kernel].0
    }

    /// `kernel` compiled with `constants`, from the cache or compiled now.
    pub fn pipeline(
        &self,
        device: &wgpu::Device,
        kernel: Kernel,
        constants: &[(&'static str, f64)],
    ) -> Result<wgpu::ComputePipeline> {
        let key: PipelineKey = (
            kernel,
            constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
        );
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let label = kernel.name();
        let p = checked(device, &format!("compiling the {label} kernel"), || {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&self.layouts[&kernel].1),
                module: &self.modules[&kernel],
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        })?;
        cache.insert(key, p.clone());
        Ok(p)
    }

    /// The step (or whole-sequence) pipeline for `key`.
    pub fn step(&self, device: &wgpu::Device, key: StepKey) -> Result<wgpu::ComputePipeline> {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let kernel = if key.whole_sequence {
            Kernel::Sequence
        } else {
            Kernel::Step
        };
        let mut constants = vec![
            ("ACTIVATION", f64::from(key.activation.id())),
            (
                "RECURRENT_ACTIVATION",
                f64::from(key.recurrent_activation.id()),
            ),
            ("ZERO_OUTPUT_FOR_MASK", flag(key.zero_output_for_mask)),
            ("HAS_MASK", flag(key.has_mask)),
            ("WRITE_SEQUENCE", flag(key.write_sequence)),
        ];
        constants.push(("CELL", f64::from(key.cell.0)));
        constants.push(("GATES", f64::from(key.cell.1)));
        self.pipeline(device, kernel, &constants)
    }

    /// The merge pipeline for `mode` (None merges as concat; the host splits the halves).
    pub fn merge(&self, device: &wgpu::Device, mode: MergeMode) -> Result<wgpu::ComputePipeline> {
        let id = match mode {
            MergeMode::Concat | MergeMode::None => 0.0,
            MergeMode::Sum => 1.0,
            MergeMode::Mul => 2.0,
            MergeMode::Ave => 3.0,
        };
        self.pipeline(device, Kernel::Merge, &[("MERGE_MODE", id)])
    }

    /// The Dense activation pipeline (an activation, or softmax for `None`).
    pub fn dense(
        &self,
        device: &wgpu::Device,
        activation: Option<Activation>,
    ) -> Result<wgpu::ComputePipeline> {
        let id = activation.map_or(0, Activation::id);
        let softmax = if activation.is_none() { 1.0 } else { 0.0 };
        self.pipeline(
            device,
            Kernel::Dense,
            &[("ACTIVATION", f64::from(id)), ("SOFTMAX", softmax)],
        )
    }
}
