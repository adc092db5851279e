//! The compute kernels: WGSL sources, their bind-group layouts and pipelines, created once per
//! [`GpuContext`] and cached (step pipelines per set of override constants).

use super::context::GpuContext;
use super::params::PARAMS_SIZE;
use crate::activation::Activation;
use crate::config::MergeMode;
use crate::error::Result;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The activation functions shared by the kernels (prepended to their sources).
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");
/// The input-projection GEMM.
pub const PROJECTION_WGSL: &str = include_str!("../../shaders/projection.wgsl");
/// The LSTM cell shared by the step and sequence kernels (prepended after the activations).
pub const CELL_WGSL: &str = include_str!("../../shaders/cell.wgsl");
/// The fused per-timestep kernel (without the prelude).
pub const STEP_WGSL: &str = include_str!("../../shaders/step.wgsl");
/// The whole-sequence kernel for small layers (without the prelude).
pub const SEQUENCE_WGSL: &str = include_str!("../../shaders/sequence.wgsl");
/// The Bidirectional merge.
pub const MERGE_WGSL: &str = include_str!("../../shaders/merge.wgsl");
/// Keras `Masking`.
pub const MASK_WGSL: &str = include_str!("../../shaders/mask.wgsl");
/// The activation of a `Dense` layer (without the prelude).
pub const DENSE_WGSL: &str = include_str!("../../shaders/dense.wgsl");

/// The complete source of each kernel, as it is compiled: `(name, source)`.
///
/// ```
/// let names: Vec<&str> = lstm_wgpu::gpu::kernel_sources().iter().map(|(n, _)| *n).collect();
/// assert_eq!(names, ["projection", "step", "sequence", "merge", "mask", "dense"]);
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
    ]
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
}

pub(crate) struct Kernels {
    pub projection_layout: wgpu::BindGroupLayout,
    pub projection: wgpu::ComputePipeline,
    pub step_layout: wgpu::BindGroupLayout,
    step_pipeline_layout: wgpu::PipelineLayout,
    step_module: wgpu::ShaderModule,
    sequence_module: wgpu::ShaderModule,
    steps: Mutex<HashMap<StepKey, wgpu::ComputePipeline>>,
    pub merge_layout: wgpu::BindGroupLayout,
    merge_pipeline_layout: wgpu::PipelineLayout,
    merge_module: wgpu::ShaderModule,
    merges: Mutex<HashMap<u32, wgpu::ComputePipeline>>,
    pub mask_layout: wgpu::BindGroupLayout,
    pub mask: wgpu::ComputePipeline,
    pub dense_layout: wgpu::BindGroupLayout,
    dense_pipeline_layout: wgpu::PipelineLayout,
    dense_module: wgpu::ShaderModule,
    denses: Mutex<HashMap<(u32, bool), wgpu::ComputePipeline>>,
}

/// Compiles `module`'s `main` with the given override constants.
fn compile(
    ctx: &GpuContext,
    label: &str,
    layout: &wgpu::PipelineLayout,
    module: &wgpu::ShaderModule,
    constants: &[(&str, f64)],
) -> Result<wgpu::ComputePipeline> {
    ctx.checked(&format!("compiling the {label} kernel"), || {
        ctx.device()
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(layout),
                module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
    })
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
            min_binding_size: wgpu::BufferSize::new(PARAMS_SIZE),
        },
        count: None,
    }
}

impl Kernels {
    /// The context's kernels, created on first use.
    pub fn get(ctx: &GpuContext) -> Result<Arc<Kernels>> {
        if let Some(k) = ctx.kernels.get() {
            return Ok(k.clone());
        }
        let k = Arc::new(ctx.checked("creating the kernels", || Kernels::create(ctx))?);
        Ok(ctx.kernels.get_or_init(|| k).clone())
    }

    fn create(ctx: &GpuContext) -> Kernels {
        let device = ctx.device();
        let module = |label: &str, src: String| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(Cow::Owned(src)),
            })
        };
        let sources: HashMap<_, _> = kernel_sources().into_iter().collect();
        let layout = |label: &str, entries: &[wgpu::BindGroupLayoutEntry]| {
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries,
            })
        };
        let pipeline_layout = |label: &str, bgl: &wgpu::BindGroupLayout| {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(bgl)],
                immediate_size: 0,
            })
        };

        let projection_layout = layout(
            "projection",
            &[
                params(true),
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, false),
                storage(5, true),
            ],
        );
        // The kernels without override constants: compiled once here.
        let pipeline = |label: &str, bgl: &wgpu::BindGroupLayout| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&pipeline_layout(label, bgl)),
                module: &module(label, sources[label].clone()),
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let projection = pipeline("projection", &projection_layout);

        let step_layout = layout(
            "step",
            &[
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
        );
        let step_pipeline_layout = pipeline_layout("step", &step_layout);
        let merge_layout = layout(
            "merge",
            &[
                params(false),
                storage(1, true),
                storage(2, true),
                storage(3, false),
            ],
        );
        let merge_pipeline_layout = pipeline_layout("merge", &merge_layout);
        let mask_layout = layout(
            "mask",
            &[
                params(false),
                storage(1, true),
                storage(2, false),
                storage(3, false),
            ],
        );
        let mask = pipeline("mask", &mask_layout);
        let dense_layout = layout("dense", &[params(false), storage(1, false)]);
        let dense_pipeline_layout = pipeline_layout("dense", &dense_layout);
        Kernels {
            projection_layout,
            projection,
            step_layout,
            step_pipeline_layout,
            step_module: module("step", sources["step"].clone()),
            sequence_module: module("sequence", sources["sequence"].clone()),
            steps: Mutex::new(HashMap::new()),
            merge_layout,
            merge_pipeline_layout,
            merge_module: module("merge", sources["merge"].clone()),
            merges: Mutex::new(HashMap::new()),
            mask_layout,
            mask,
            dense_layout,
            dense_pipeline_layout,
            dense_module: module("dense", sources["dense"].clone()),
            denses: Mutex::new(HashMap::new()),
        }
    }

    /// The Dense activation pipeline (an activation id, or softmax).
    pub fn dense(
        &self,
        ctx: &GpuContext,
        activation: u32,
        softmax: bool,
    ) -> Result<wgpu::ComputePipeline> {
        let mut cache = self.denses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&(activation, softmax)) {
            return Ok(p.clone());
        }
        let constants = [
            ("ACTIVATION", activation as f64),
            ("SOFTMAX", if softmax { 1.0 } else { 0.0 }),
        ];
        let p = compile(
            ctx,
            "dense",
            &self.dense_pipeline_layout,
            &self.dense_module,
            &constants,
        )?;
        cache.insert((activation, softmax), p.clone());
        Ok(p)
    }

    /// The step (or whole-sequence) pipeline for `key`, compiled on first use.
    pub fn step(&self, ctx: &GpuContext, key: StepKey) -> Result<wgpu::ComputePipeline> {
        let mut cache = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let constants = [
            ("ACTIVATION", key.activation.id() as f64),
            ("RECURRENT_ACTIVATION", key.recurrent_activation.id() as f64),
            ("ZERO_OUTPUT_FOR_MASK", flag(key.zero_output_for_mask)),
            ("HAS_MASK", flag(key.has_mask)),
            ("WRITE_SEQUENCE", flag(key.write_sequence)),
        ];
        let module = if key.whole_sequence {
            &self.sequence_module
        } else {
            &self.step_module
        };
        let label = if key.whole_sequence {
            "sequence"
        } else {
            "step"
        };
        let p = compile(ctx, label, &self.step_pipeline_layout, module, &constants)?;
        cache.insert(key, p.clone());
        Ok(p)
    }

    /// The merge pipeline for `mode` (None merges as concat; the host splits the halves).
    pub fn merge(&self, ctx: &GpuContext, mode: MergeMode) -> Result<wgpu::ComputePipeline> {
        let id = match mode {
            MergeMode::Concat | MergeMode::None => 0u32,
            MergeMode::Sum => 1,
            MergeMode::Mul => 2,
            MergeMode::Ave => 3,
        };
        let mut cache = self.merges.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&id) {
            return Ok(p.clone());
        }
        let constants = [("MERGE_MODE", id as f64)];
        let p = compile(
            ctx,
            "merge",
            &self.merge_pipeline_layout,
            &self.merge_module,
            &constants,
        )?;
        cache.insert(id, p.clone());
        Ok(p)
    }
}
