//! Compiling a model for the GPU, the way wgpu's `repeated_compute` and wonnx's `GpuModel`
//! do: a [`GpuModel`] is a list of stages (one per layer, weights uploaded once), and for each
//! shape (batch, timesteps, mask) it is compiled once into a [`Plan`]: a list of dispatches
//! (pipeline, bind group, dynamic offsets, grid), the buffers to clear before and copy after,
//! and where each output lies in the readback. A forward encodes the list in one compute pass,
//! submits once and maps once (`gpu::exec`).
//!
//! Each layer kind is a [`GpuStage`] in its own file (`lstm.rs`, `merge.rs`, `mask.rs`,
//! `dense.rs`) that appends its dispatches; nothing here knows the kinds. The kernel choice
//! ([`RecurrentKernel`]) and every adapter limit (binding sizes, dispatch sizes, the driver's
//! loop limit) are applied by the builders.

mod buffers;
mod context;
mod dense;
mod lstm;
mod mask;
mod merge;

pub(super) use buffers::{BufferPool, StateBuffers};
pub(super) use context::PlanContext;
pub(super) use dense::DenseStage;
pub(super) use lstm::LstmStage;
pub(super) use mask::MaskStage;
pub(super) use merge::BidiStage;

use super::context::GpuContext;
use super::kernels::Kernels;
use super::params::{PARAMS_SIZE, PERSISTENT_MAX_STATE};
use super::stats::{Phase, Timestamps};
use crate::config::LstmConfig;
use crate::error::Result;
use buffers::{check_binding, limit_error, Allocator};
use std::ops::Range;
use std::sync::Arc;

/// How many shapes keep their plan by default ([`GpuNetwork::set_plan_capacity`](super::GpuNetwork::set_plan_capacity)).
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

/// One layer of a model on the GPU: its uploaded weights, and the builder that appends its
/// dispatches to a plan. Adding a layer kind means one implementation of this trait (with its
/// WGSL file and CPU twin), nothing in a central function.
pub(in crate::gpu) trait GpuStage: Send + Sync + std::fmt::Debug {
    /// The recurrent directions of this stage (their configs, in the order of their
    /// initial-state tensors and state outputs); none for other layers.
    fn directions(&self) -> Vec<&LstmConfig> {
        Vec::new()
    }

    /// Appends this stage's dispatches reading `input`; returns its output tensor and the
    /// outputs Keras returns when it is the model's last layer.
    fn plan(&self, cx: &mut PlanContext<'_, '_>, input: &Tensor) -> Result<Planned>;
}

/// A tensor of the plan: `[B, rows, width]` floats in `buf`.
#[derive(Clone)]
pub(in crate::gpu) struct Tensor {
    pub buf: wgpu::Buffer,
    pub width: usize,
    /// Whether it has a time axis (`[B, T, W]`), or one row per batch row (`[B, W]`, after a
    /// layer that returns its last output only).
    pub sequence: bool,
    /// Whether a Keras mask travels with it (in the plan's mask buffer).
    pub masked: bool,
}

/// One output of the model, read back from `buf` at byte `offset`.
pub(in crate::gpu) struct Output {
    pub buf: wgpu::Buffer,
    pub offset: u64,
    pub shape: Vec<usize>,
    /// Each entry one output: a column range of the last axis, or the whole tensor.
    pub cols: Vec<Option<Range<usize>>>,
}

impl Tensor {
    /// Rows per batch row: T, or 1 without a time axis.
    pub fn rows(&self, steps: usize) -> usize {
        if self.sequence {
            steps
        } else {
            1
        }
    }
}

impl Output {
    /// The whole of `t` (`[B, T, W]`, or `[B, W]` when it has no time axis).
    pub fn tensor(t: &Tensor, batch: usize, steps: usize) -> Output {
        let shape = if t.sequence {
            vec![batch, steps, t.width]
        } else {
            vec![batch, t.width]
        };
        Output {
            buf: t.buf.clone(),
            offset: 0,
            shape,
            cols: vec![None],
        }
    }
}

/// What a stage's builder returns.
pub(in crate::gpu) struct Planned {
    /// The input of the next stage.
    pub next: Tensor,
    /// Its outputs in Keras's return order, read back when it is the last stage.
    pub outputs: Vec<Output>,
}

/// One dispatch of a plan.
pub(super) struct Dispatch {
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) bind: wgpu::BindGroup,
    pub(super) offsets: Vec<u32>,
    pub(super) groups: (u32, u32),
}

/// What a forward records in its compute pass, in order.
pub(super) enum Op {
    Dispatch(Dispatch),
    /// A timestamp closing a phase of the time profile (recorded when profiling).
    Mark(Phase),
}

/// Where an output lies in the staging buffer.
pub(super) struct OutSpec {
    pub(super) offset: usize,
    pub(super) shape: Vec<usize>,
    pub(super) cols: Option<Range<usize>>,
}

/// A model compiled for one shape.
pub(super) struct Plan {
    pub(super) x: wgpu::Buffer,
    pub(super) mask: wgpu::Buffer,
    pub(super) clears: Vec<wgpu::Buffer>,
    pub(super) ops: Vec<Op>,
    pub(super) carries: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    /// Copies into the staging buffer: (source, source offset, staging offset, bytes).
    pub(super) copies: Vec<(wgpu::Buffer, u64, u64, u64)>,
    pub(super) outputs: Vec<OutSpec>,
    pub(super) staging: wgpu::Buffer,
    /// Bytes of `staging` this shape reads back.
    pub(super) staging_size: u64,
    pub(super) timestamps: Option<Timestamps>,
    /// Every buffer the plan references (pooled working buffers and its own parameters).
    pub(super) held: Vec<wgpu::Buffer>,
    pub(super) params_bytes: u64,
    pub(super) buffers: u32,
    pub(super) projection_chunks: u32,
}

/// A plan's shape: batch, timesteps, whether a mask is given, and the batch the kernel choice
/// is made for (the whole batch of a forward that runs in batch chunks, so that every chunk
/// runs the kernel the whole batch would and the outputs are the same bits).
pub(super) type PlanKey = (usize, usize, bool, usize);

/// A model on the GPU: its stages in order, with their weights uploaded.
pub(super) struct GpuModel {
    pub(super) ctx: Arc<GpuContext>,
    pub(super) kernels: Arc<Kernels>,
    pub(super) stages: Vec<Box<dyn GpuStage>>,
    pub(super) input_dim: usize,
    pub(super) weight_bytes: u64,
}

impl GpuModel {
    /// Every recurrent direction, in the order of the state buffers.
    pub(super) fn directions(&self) -> Vec<&LstmConfig> {
        self.stages.iter().flat_map(|s| s.directions()).collect()
    }

    /// Compiles the model for shape `key`, with working buffers from `pool`.
    pub(super) fn plan(
        &self,
        (batch, steps, has_mask, choice_batch): PlanKey,
        states: &StateBuffers,
        kernel_choice: RecurrentKernel,
        profile: bool,
        pool: &mut BufferPool,
    ) -> Result<Plan> {
        self.ctx
            .checked("building the forward plan", || -> Result<Plan> {
                let ctx = &*self.ctx;
                let limits = ctx.limits();
                let stride = (PARAMS_SIZE as u32)
                    .next_multiple_of(limits.min_uniform_buffer_offset_alignment)
                    as usize;
                let mut alloc = Allocator::new(ctx, pool);
                let storage = wgpu::BufferUsages::STORAGE;
                let x_size = (batch * steps * self.input_dim * 4) as u64;
                check_binding(ctx, "x", x_size)?;
                let x = alloc.buffer("x", x_size, storage | wgpu::BufferUsages::COPY_DST);
                // Always [B, T]: a Masking stage writes it when no mask is given.
                let mask_size = (batch * steps * 4) as u64;
                check_binding(ctx, "mask", mask_size)?;
                let mask = alloc.buffer("mask", mask_size, storage | wgpu::BufferUsages::COPY_DST);
                let dummy = alloc.buffer("unused", 4, storage);
                // The unused vec4 views (bindings read only, so a buffer of their own: `dummy` can be
                // bound read-write in the same dispatch).
                let dummy_vec4 = alloc.buffer("unused vec4 view", 16, storage);
                let mut cx = PlanContext {
                    ctx,
                    kernels: &self.kernels,
                    alloc,
                    states,
                    batch,
                    steps,
                    choice_batch,
                    kernel_choice,
                    max_groups: limits.max_compute_workgroups_per_dimension as usize,
                    stride,
                    mask,
                    dummy,
                    dummy_vec4,
                    loop_cap: ctx.loop_limit()?,
                    ops: Vec::new(),
                    clears: Vec::new(),
                    carries: Vec::new(),
                    projection_chunks: 0,
                };
                let mut input = Tensor {
                    buf: x.clone(),
                    width: self.input_dim,
                    sequence: true,
                    masked: has_mask,
                };
                let mut outputs = Vec::new();
                for stage in &self.stages {
                    let planned = stage.plan(&mut cx, &input)?;
                    input = planned.next;
                    outputs = planned.outputs;
                }
                let PlanContext {
                    mut alloc,
                    mask,
                    ops,
                    clears,
                    carries,
                    projection_chunks,
                    ..
                } = cx;

                // Readback: the last stage's outputs, copied into one staging buffer.
                let mut copies = Vec::new();
                let mut specs = Vec::new();
                let mut floats = 0;
                for o in outputs {
                    let n: usize = o.shape.iter().product();
                    copies.push((o.buf, o.offset, (floats * 4) as u64, (n * 4) as u64));
                    for cols in o.cols {
                        specs.push(OutSpec {
                            offset: floats,
                            shape: o.shape.clone(),
                            cols,
                        });
                    }
                    floats += n;
                }
                let timestamps = profile.then(|| {
                    let phases: Vec<Phase> = std::iter::once(Phase::Start)
                        .chain(ops.iter().filter_map(|op| match op {
                            Op::Mark(p) => Some(*p),
                            Op::Dispatch(_) => None,
                        }))
                        .collect();
                    let n = phases.len() as u32;
                    let set = ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("forward timestamps"),
                        ty: wgpu::QueryType::Timestamp,
                        count: n,
                    });
                    let resolve = alloc.buffer(
                        "timestamps",
                        8 * u64::from(n),
                        wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    );
                    Timestamps {
                        set,
                        resolve,
                        phases,
                        offset: ((floats * 4) as u64).next_multiple_of(8),
                    }
                });
                let staging_size = match &timestamps {
                    Some(ts) => ts.offset + 8 * ts.phases.len() as u64,
                    None => (floats * 4) as u64,
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
                    clears,
                    ops,
                    carries,
                    copies,
                    outputs: specs,
                    staging,
                    staging_size,
                    timestamps,
                    params_bytes: alloc.params_bytes,
                    buffers: alloc.created,
                    held: alloc.held,
                    projection_chunks,
                })
            })?
    }
}
