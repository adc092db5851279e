//! Compiling a model for the GPU, the way wgpu's `repeated_compute` and wonnx's `GpuModel`
//! do: a [`GpuModel`] is a graph of nodes (calls of layers) over stages (one per layer,
//! weights uploaded once), and for each shape (the inputs' shapes, mask or not) it is compiled
//! once into a [`Plan`]: a list of dispatches (pipeline, bind group, dynamic offsets, grid),
//! the buffers to clear before and copy after, and where each output lies in the readback. A
//! forward encodes the list in one compute pass, submits once and maps once (`gpu::exec`).
//!
//! Each layer kind is a [`GpuStage`] in its own file (`lstm.rs`, `merge.rs`, `mask.rs`,
//! `dense.rs`, `gather.rs`, ...) that appends its dispatches; nothing here knows the kinds. The kernel choice
//! ([`RecurrentKernel`]) and every adapter limit (binding sizes, dispatch sizes, the driver's
//! loop limit) are applied by the builders.

mod attention;
mod buffers;
mod context;
mod conv;
mod conv_lstm;
mod custom;
mod dense;
mod elementwise;
mod embedding;
mod gather;
mod lstm;
mod mask;
mod merge;
mod mha;
mod norm;
mod pool;
mod stacked;
mod subgraph;
mod timedist;

pub(crate) use attention::{AttentionStage, DotStage};
pub(super) use buffers::{BufferPool, StateBuffers};
pub(crate) use context::PlanContext;
pub(crate) use conv::ConvStage;
pub(crate) use conv_lstm::{BiConvLstmStage, ConvLstmStage};
pub(crate) use custom::CustomStage;
pub(crate) use dense::DenseStage;
pub(crate) use elementwise::{broadcast_shape, BinaryOp, BinaryStage, UnaryOp, UnaryStage};
pub(crate) use embedding::EmbeddingStage;
pub(crate) use gather::{GatherStage, Layout};
pub(crate) use lstm::LstmStage;
pub(crate) use mask::MaskStage;
pub(crate) use merge::BidiStage;
pub(crate) use mha::MhaStage;
pub(crate) use norm::NormStage;
pub(crate) use pool::PoolStage;
pub(crate) use stacked::StackedStage;
pub(crate) use subgraph::SubGraphStage;
pub(crate) use timedist::TimeDistributedStage;

use super::context::GpuContext;
use super::kernels::Kernels;
use super::params::{PARAMS_SIZE, PERSISTENT_MAX_STATE};
use super::stats::{Phase, Timestamps};
use crate::config::LstmConfig;
use crate::error::{LstmError, Result};
use buffers::{check_binding, limit_error, Allocator};
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
/// WGSL file and CPU twin, whose graph op builds it in `graph::ops::Op::gpu`), nothing in a
/// central function.
pub(crate) trait GpuStage: Send + Sync + std::fmt::Debug {
    /// The recurrent directions of this stage (their configs, in the order of their
    /// initial-state tensors and state outputs); none for other layers.
    fn directions(&self) -> Vec<&LstmConfig> {
        Vec::new()
    }

    /// The state buffer slots of its recurrent directions with their units (see
    /// `directions`).
    fn state_slots(&self) -> Vec<(usize, usize)> {
        Vec::new()
    }

    /// The vocabulary size when this is an `Embedding` (its token inputs are checked against
    /// it on the host before they are uploaded).
    fn vocabulary(&self) -> Option<usize> {
        None
    }

    /// Appends this stage's dispatches for one call reading `args`; returns the call's
    /// outputs in Keras's order, each with the mask Keras gives it.
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>>;
}

/// What one call of a layer reads: its positional tensors, its `initial_state` tensors, an
/// explicit `mask=` tensor, and the call's scalar and keyword arguments.
pub(crate) struct Args<'a> {
    pub inputs: &'a [Tensor],
    pub states: &'a [Tensor],
    pub mask: Option<&'a Tensor>,
    pub scalars: &'a [f64],
    pub kwargs: &'a serde_json::Map<String, serde_json::Value>,
}

impl<'a> Args<'a> {
    /// The one input of a one-input layer, or an error naming `layer`.
    pub fn one(&self, layer: &str) -> Result<&'a Tensor> {
        match self.inputs {
            [x] => Ok(x),
            other => Err(LstmError::invalid(
                format!("layer {layer}"),
                format!("takes one input, got {}", other.len()),
            )),
        }
    }

    /// A boolean keyword argument (false when absent).
    pub fn flag(&self, key: &str) -> bool {
        self.kwargs
            .get(key)
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

/// A tensor of the plan: `shape` (batch first) floats in `buf`, row-major from byte 0, and
/// the Keras mask that travels with it (`[B, T]` floats, 1.0 = step present, 0.0 = masked;
/// the recurrent kernels test it against zero).
#[derive(Clone, Debug)]
pub(crate) struct Tensor {
    pub buf: wgpu::Buffer,
    /// Where the values start in `buf`, in bytes: 0, except for outputs that lie inside
    /// another buffer (a recurrent layer's final c in its state buffer). Stages only see
    /// offset 0: `GpuModel::plan` copies any other tensor a node reads into a buffer of its
    /// own first; the readback copies from the offset directly.
    pub offset: u64,
    pub shape: Vec<usize>,
    pub mask: Option<wgpu::Buffer>,
}

impl Tensor {
    /// Values in the tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The last axis.
    pub fn width(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Rows of `width` values (every axis but the last).
    pub fn rows(&self) -> usize {
        self.len() / self.width().max(1)
    }

    /// `[B, T, W]` of a 3-D tensor, or an error naming `what`.
    pub fn dims3(&self, what: &str) -> Result<(usize, usize, usize)> {
        match self.shape[..] {
            [b, t, w] => Ok((b, t, w)),
            _ => Err(LstmError::shape(what, &[0, 0, 0], &self.shape)),
        }
    }
}

/// Where a node's tensor comes from: a model input, or output `k` of an earlier node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    Input(usize),
    Node(usize, usize),
}

/// One call of a layer in a model on the GPU: its stage (shared by every call of the layer)
/// and the tensors it reads.
#[derive(Debug, Clone)]
pub(crate) struct GpuNode {
    pub name: String,
    pub stage: usize,
    pub inputs: Vec<Src>,
    pub states: Vec<Src>,
    pub mask: Option<Src>,
    pub scalars: Vec<f64>,
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

/// A model input on the GPU: its name and shape after the batch axis (`None` = any length).
#[derive(Debug, Clone)]
pub(crate) struct GpuInput {
    pub name: String,
    pub dims: Vec<Option<usize>>,
    /// The smallest vocabulary of the Embedding layers reading it directly (token ids are
    /// checked against it before the upload).
    pub vocabulary: Option<usize>,
    /// Whether the model takes integers here (token ids), as Keras's dtype says.
    pub integer: bool,
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
}

/// A model compiled for one shape.
pub(super) struct Plan {
    /// One buffer per model input.
    pub(super) inputs: Vec<wgpu::Buffer>,
    /// The mask of the first input, when the forward gives one.
    pub(super) mask: Option<wgpu::Buffer>,
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

/// A plan's shape: the inputs' shapes, whether a mask is given, and the batch the kernel
/// choice is made for (the whole batch of a forward that runs in batch chunks, so that every
/// chunk runs the kernel the whole batch would and the outputs are the same bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlanKey {
    pub(super) shapes: Vec<Vec<usize>>,
    pub(super) has_mask: bool,
    pub(super) choice_batch: usize,
}

/// A model on the GPU: its stages with their weights uploaded, and the calls of them in an
/// order where each reads only tensors made before it.
pub(super) struct GpuModel {
    pub(super) ctx: Arc<GpuContext>,
    pub(super) kernels: Arc<Kernels>,
    pub(super) stages: Vec<Box<dyn GpuStage>>,
    pub(super) nodes: Vec<GpuNode>,
    pub(super) inputs: Vec<GpuInput>,
    /// The model's outputs: output `k` of a node, or (None) every output of it.
    pub(super) outputs: Vec<(usize, Option<usize>)>,
    /// Their names (a `None` entry's outputs share one).
    pub(super) output_names: Vec<String>,
    pub(super) weight_bytes: u64,
}

impl GpuModel {
    /// A chain of `stages`, each reading the one before, on one input of `input_dim`
    /// features; the outputs are every output of the last.
    pub(super) fn chain(
        ctx: Arc<GpuContext>,
        stages: Vec<Box<dyn GpuStage>>,
        input_dim: usize,
        weight_bytes: u64,
    ) -> Result<GpuModel> {
        let nodes: Vec<GpuNode> = (0..stages.len())
            .map(|k| GpuNode {
                name: format!("layer {k}"),
                stage: k,
                inputs: vec![if k == 0 {
                    Src::Input(0)
                } else {
                    Src::Node(k - 1, 0)
                }],
                states: Vec::new(),
                mask: None,
                scalars: Vec::new(),
                kwargs: Default::default(),
            })
            .collect();
        let last = nodes
            .len()
            .checked_sub(1)
            .ok_or_else(|| LstmError::invalid("model", "has no layer"))?;
        Ok(GpuModel {
            kernels: ctx.kernels()?,
            ctx,
            stages,
            nodes,
            inputs: vec![GpuInput {
                name: "x".into(),
                dims: vec![None, Some(input_dim)],
                vocabulary: None,
                integer: false,
            }],
            outputs: vec![(last, None)],
            output_names: vec!["output".into()],
            weight_bytes,
        })
    }

    /// Every recurrent direction, in the order of the state buffers.
    pub(super) fn directions(&self) -> Vec<&LstmConfig> {
        self.stages.iter().flat_map(|s| s.directions()).collect()
    }

    /// Compiles the model for shape `key`, with working buffers from `pool`.
    pub(super) fn plan(
        &self,
        key: &PlanKey,
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
                let batch = key
                    .shapes
                    .first()
                    .and_then(|s| s.first())
                    .copied()
                    .unwrap_or(0);
                let mut inputs = Vec::new();
                let mut tensors = Vec::new();
                for (k, shape) in key.shapes.iter().enumerate() {
                    let name = self.inputs.get(k).map_or("x", |i| i.name.as_str());
                    let size = (shape.iter().product::<usize>() * 4) as u64;
                    check_binding(ctx, &format!("input {name}"), size)?;
                    let buf = alloc.buffer(
                        "x",
                        size,
                        storage | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                    );
                    inputs.push(buf.clone());
                    tensors.push(Tensor {
                        buf,
                        offset: 0,
                        shape: shape.clone(),
                        mask: None,
                    });
                }
                let mask = if key.has_mask {
                    let steps = key.shapes[0].get(1).copied().unwrap_or(1);
                    let size = (batch * steps * 4) as u64;
                    check_binding(ctx, "mask", size)?;
                    let m = alloc.buffer("mask", size, storage | wgpu::BufferUsages::COPY_DST);
                    tensors[0].mask = Some(m.clone());
                    Some(m)
                } else {
                    None
                };
                let dummy = alloc.buffer("unused", 4, storage);
                // The unused vec4 views (bindings read only, so a buffer of their own: `dummy` can be
                // bound read-write in the same dispatch).
                let dummy_vec4 = alloc.buffer("unused vec4 view", 16, storage);
                let mut cx = PlanContext {
                    ctx,
                    kernels: &self.kernels,
                    alloc,
                    states: states.clone(),
                    batch,
                    choice_batch: key.choice_batch,
                    kernel_choice,
                    max_groups: limits.max_compute_workgroups_per_dimension as usize,
                    stride,
                    dummy,
                    dummy_vec4,
                    loop_cap: ctx.loop_limit()?,
                    ops: Vec::new(),
                    clears: Vec::new(),
                    carries: Vec::new(),
                    projection_chunks: 0,
                    planned_states: Vec::new(),
                    repeated: false,
                };
                let outputs =
                    plan_graph(&mut cx, (&self.stages, &self.nodes, &self.outputs), tensors)?;
                let PlanContext {
                    mut alloc,
                    ops,
                    clears,
                    carries,
                    projection_chunks,
                    ..
                } = cx;

                // Readback: the outputs, copied into one staging buffer.
                let mut copies = Vec::new();
                let mut specs = Vec::new();
                let mut floats = 0;
                for o in outputs {
                    let n = o.len();
                    copies.push((o.buf, o.offset, (floats * 4) as u64, (n * 4) as u64));
                    specs.push(OutSpec {
                        offset: floats,
                        shape: o.shape,
                    });
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
                    inputs,
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

/// A graph to plan: its stages, its calls in order, its outputs (output `k` of a call, or
/// every output of it).
pub(crate) type GraphRef<'g> = (
    &'g [Box<dyn GpuStage>],
    &'g [GpuNode],
    &'g [(usize, Option<usize>)],
);

/// Plans the calls `nodes` of `stages` (in order) on the graph's input tensors `tensors`;
/// returns the tensors `outputs` names. A model's graph, and a nested model's inside it.
pub(crate) fn plan_graph(
    cx: &mut PlanContext<'_, '_>,
    (stages, nodes, outputs_of): GraphRef<'_>,
    tensors: Vec<Tensor>,
) -> Result<Vec<Tensor>> {
    let mut values: Vec<Vec<Tensor>> = Vec::with_capacity(nodes.len());
    let get = |values: &Vec<Vec<Tensor>>, s: &Src| -> Result<Tensor> {
        match *s {
            Src::Input(k) => tensors.get(k).cloned(),
            Src::Node(n, k) => values.get(n).and_then(|v| v.get(k)).cloned(),
        }
        .ok_or_else(|| LstmError::invalid("model", format!("no tensor {s:?} (a malformed graph)")))
    };
    // A tensor a node reads, in a buffer of its own when it lies at an offset.
    let read = |cx: &mut PlanContext<'_, '_>, values: &Vec<Vec<Tensor>>, s: &Src| {
        let t = get(values, s)?;
        if t.offset == 0 {
            return Ok(t);
        }
        let mut g = gather::Gather::copy(&t.shape);
        g.in_base = (t.offset / 4) as usize;
        let mut own = cx.gathered("tensor copy", &t.buf, t.shape.clone(), &g)?;
        own.mask = t.mask;
        Ok(own)
    };
    let mut calls = vec![0usize; stages.len()];
    for node in nodes {
        if let Some(c) = calls.get_mut(node.stage) {
            *c += 1;
        }
    }
    for node in nodes {
        cx.repeated = calls.get(node.stage).is_some_and(|&c| c > 1);
        let ins = node
            .inputs
            .iter()
            .map(|s| read(cx, &values, s))
            .collect::<Result<Vec<_>>>()?;
        let sts = node
            .states
            .iter()
            .map(|s| read(cx, &values, s))
            .collect::<Result<Vec<_>>>()?;
        let m = node
            .mask
            .as_ref()
            .map(|s| read(cx, &values, s))
            .transpose()?;
        let args = Args {
            inputs: &ins,
            states: &sts,
            mask: m.as_ref(),
            scalars: &node.scalars,
            kwargs: &node.kwargs,
        };
        let outs = stages[node.stage].plan(cx, &args).map_err(|e| {
            log::debug!("planning {} failed: {e}", node.name);
            e
        })?;
        values.push(outs);
    }
    let mut outputs = Vec::new();
    for &(n, k) in outputs_of {
        let outs = values
            .get(n)
            .ok_or_else(|| LstmError::invalid("model", format!("no output of node {n}")))?;
        match k {
            None => outputs.extend(outs.iter().cloned()),
            Some(k) => outputs.push(get(&values, &Src::Node(n, k))?),
        }
    }
    Ok(outputs)
}
