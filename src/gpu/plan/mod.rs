//! Plans: for one shape (batch, timesteps, mask), the buffers, bind groups and parameter
//! blocks of every dispatch, built once and cached; the working buffers are pooled across
//! shapes. The kernel choice (`RecurrentKernel`) and every adapter limit (binding sizes,
//! dispatch sizes, the driver's loop limit) are applied here.

mod dense;
mod lstm;
mod mask;
mod merge;

use super::context::GpuContext;
use super::kernels::Kernel;
use super::network::{GpuNetwork, StateBuffers};
use super::params::{PARAMS_SIZE, PERSISTENT_MAX_STATE};
use super::stats::{Phase, Timestamps};
use super::upload::Stage;
use crate::config::MergeMode;
use crate::error::{LstmError, Result};
use std::collections::HashMap;
use std::ops::Range;

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

/// The dispatches of a Masking or Dense stage.
pub(super) struct ExtraPlan {
    /// (pipeline, bind group, dynamic offsets, workgroups x, workgroups y)
    pub(super) dispatches: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, Vec<u32>, u32, u32)>,
}

/// One projection chunk of a direction and the recurrent dispatches that consume it.
pub(super) struct ChunkPlan {
    /// The projection's parameter offset and workgroups (x, y).
    pub(super) projection: (u32, u32, u32),
    /// Parameter offsets of the recurrent dispatches (one per timestep for step.wgsl, one per
    /// run of timesteps for sequence.wgsl).
    pub(super) recurrent: Vec<u32>,
    /// How many recurrent dispatches of the direction come before this chunk's (which of the
    /// ping-pong state buffers the first one reads).
    pub(super) first: usize,
}

/// Buffers of one direction for one shape.
pub(super) struct DirPlan {
    pub(super) last: wgpu::Buffer,
    pub(super) seq: Option<wgpu::Buffer>,
    pub(super) proj_bind: wgpu::BindGroup,
    pub(super) proj_pipeline: wgpu::ComputePipeline,
    /// Recurrent dispatch n reads state buffer n % 2 and writes the other.
    pub(super) step_bind: [wgpu::BindGroup; 2],
    pub(super) step_pipeline: wgpu::ComputePipeline,
    pub(super) chunks: Vec<ChunkPlan>,
    /// Workgroups (x, y) of each recurrent dispatch.
    pub(super) step_groups: (u32, u32),
    /// Which state buffer holds the final state.
    pub(super) final_parity: usize,
}

pub(super) struct MergePlan {
    pub(super) out: wgpu::Buffer,
    pub(super) bind: wgpu::BindGroup,
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) groups: (u32, u32),
}

/// Where an output lies in the staging buffer.
pub(super) struct OutSpec {
    pub(super) offset: usize,
    pub(super) shape: Vec<usize>,
    pub(super) cols: Option<Range<usize>>,
}

/// The copies into the staging buffer and where each output lies in it.
#[derive(Default)]
pub(super) struct Readback {
    pub(super) copies: Vec<(wgpu::Buffer, u64, u64, u64)>,
    pub(super) outputs: Vec<OutSpec>,
    pub(super) floats: usize,
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
pub(super) struct BufferPool {
    pub(super) slots: HashMap<(String, u32, u32), wgpu::Buffer>,
}

/// Creates a plan's buffers: working buffers from the pool, parameter blocks its own.
pub(super) struct Allocator<'a> {
    pub(super) ctx: &'a GpuContext,
    pub(super) pool: &'a mut BufferPool,
    /// How many buffers of each (label, usage) this plan has asked for so far.
    pub(super) ordinals: HashMap<(String, u32), u32>,
    /// Every buffer the plan references.
    pub(super) held: Vec<wgpu::Buffer>,
    /// Buffers created for this plan.
    pub(super) created: u32,
    pub(super) params_bytes: u64,
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

pub(super) struct Plan {
    pub(super) x: wgpu::Buffer,
    pub(super) mask: wgpu::Buffer,
    pub(super) dirs: Vec<DirPlan>,
    pub(super) merges: Vec<Option<MergePlan>>,
    pub(super) extras: Vec<Option<ExtraPlan>>,
    pub(super) staging: wgpu::Buffer,
    /// Bytes of `staging` this shape reads back.
    pub(super) staging_size: u64,
    pub(super) copies: Vec<(wgpu::Buffer, u64, u64, u64)>,
    pub(super) outputs: Vec<OutSpec>,
    pub(super) timestamps: Option<Timestamps>,
    /// Every buffer the plan references (pooled working buffers and its own parameters).
    pub(super) held: Vec<wgpu::Buffer>,
    pub(super) params_bytes: u64,
    pub(super) buffers: u32,
}

/// A plan's shape: batch, timesteps, whether a mask is given, and the batch the kernel choice
/// is made for (the whole batch of a forward that runs in batch chunks, so that every chunk
/// runs the kernel the whole batch would and the outputs are the same bits).
pub(super) type PlanKey = (usize, usize, bool, usize);

/// What the stage builders of one plan share: the network, the shape, the allocator and the
/// buffers every stage binds.
pub(in crate::gpu) struct PlanContext<'a, 'p> {
    pub net: &'a GpuNetwork,
    pub device: &'a wgpu::Device,
    pub alloc: Allocator<'p>,
    pub states: &'a StateBuffers,
    pub batch: usize,
    pub steps: usize,
    /// The batch the recurrent kernel is chosen for (see `PlanKey`).
    pub choice_batch: usize,
    pub max_groups: usize,
    /// Bytes between parameter blocks (the uniform offset alignment).
    pub stride: usize,
    /// The mask `[B, T]` (one u32 per step), or a 4-byte stand-in.
    pub mask: wgpu::Buffer,
    /// Stand-ins for unused bindings (the second for read-only vec4 views).
    pub dummy: wgpu::Buffer,
    pub dummy_vec4: wgpu::Buffer,
    /// The adapter's loop limit (`gpu::loops`).
    pub loop_cap: Option<u64>,
}

/// The binding of one parameter block of `params` (at the dynamic offset a dispatch sets).
pub(super) fn params_binding(params: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: params,
        offset: 0,
        size: wgpu::BufferSize::new(PARAMS_SIZE),
    })
}

/// A bind group of `kernel` binding each of `buffers` whole, at bindings 0, 1, ...
pub(super) fn bind_buffers(
    cx: &PlanContext<'_, '_>,
    kernel: Kernel,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
        .iter()
        .enumerate()
        .map(|(k, b)| entry(k as u32, b.as_entire_binding()))
        .collect();
    cx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(kernel.name()),
        layout: cx.net.kernels.layout(kernel),
        entries: &entries,
    })
}

/// A buffer over an adapter limit (before batch chunking is tried).
pub(super) fn limit_error(what: &str, need: u64, max: u64, limit: &str) -> LstmError {
    LstmError::Limit {
        what: what.into(),
        need,
        max,
        limit: limit.into(),
        hint: "use a smaller batch or fewer timesteps per call".into(),
    }
}

/// A 2-D dispatch grid for `items` one-per-thread items in workgroups of `per_group`; `what`
/// names the layer in the error when they exceed the adapter's dispatch limit.
pub(super) fn grid(
    what: &str,
    items: usize,
    per_group: usize,
    max_groups: usize,
) -> Result<(u32, u32)> {
    let groups = items.div_ceil(per_group).max(1);
    let gx = groups.min(max_groups);
    let gy = groups.div_ceil(gx);
    if gy > max_groups {
        return Err(dispatch_limit(what, groups, max_groups));
    }
    Ok((gx as u32, gy as u32))
}

/// `what` needs `groups` workgroups, more than the adapter dispatches (`max` per dimension).
pub(super) fn dispatch_limit(what: &str, groups: usize, max: usize) -> LstmError {
    LstmError::invalid(
        what,
        format!(
            "needs {groups} workgroups in one dimension of a dispatch, over this adapter's \
             max_compute_workgroups_per_dimension of {max}; use a smaller batch"
        ),
    )
}

/// The bind group of projection.wgsl (an LSTM's input projection, or a Dense layer): input
/// `x` of width `k`, kernel, optional bias, output. `dummies` are the unused-binding buffers
/// (the second, 16 bytes, stands in for the vec4 view of x when `k` is not a multiple of 4).
#[allow(clippy::too_many_arguments)]
pub(super) fn projection_bind_group(
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

pub(super) fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

impl GpuNetwork {
    pub(super) fn max_binding(&self) -> u64 {
        let l = self.ctx.limits();
        l.max_storage_buffer_binding_size.min(l.max_buffer_size)
    }

    pub(super) fn check_binding(&self, what: &str, size: u64) -> Result<()> {
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

    pub(super) fn build_plan(&mut self, key: PlanKey) -> Result<Plan> {
        let ctx = self.ctx.clone();
        let mut pool = std::mem::take(&mut self.pool);
        let plan = ctx.checked("building the forward plan", || {
            self.build_plan_inner(key, &mut pool)
        });
        self.pool = pool;
        plan?
    }

    pub(super) fn build_plan_inner(
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
        let states = self
            .states
            .as_ref()
            .expect("states are created before the plan");
        let mut cx = PlanContext {
            net: self,
            device,
            alloc,
            states,
            batch,
            steps,
            choice_batch,
            max_groups,
            stride,
            mask,
            dummy,
            dummy_vec4,
            loop_cap,
        };

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
                dir_plans[d] = Some(lstm::plan_direction(&mut cx, d, &input, mask_on)?);
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
                    let (extra, out) = mask::plan_mask(&mut cx, value, &input)?;
                    extras.push(Some(extra));
                    merges.push(None);
                    input = out;
                    mask_on = true;
                }
                Stage::Dense(i) => {
                    let (extra, out) = dense::plan_dense(&mut cx, i, &input, t_rows)?;
                    extras.push(Some(extra));
                    merges.push(None);
                    input = out;
                }
                Stage::Bidi { fwd, bwd, mode } => {
                    let (merge, out) = merge::plan_merge(&mut cx, (fwd, bwd, mode), &dir_plans)?;
                    merges.push(Some(merge));
                    extras.push(None);
                    input = out;
                    if !self.dirs[fwd].config.return_sequences {
                        mask_on = false;
                        t_rows = 1;
                    }
                }
            }
        }
        let PlanContext {
            mut alloc, mask, ..
        } = cx;
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
