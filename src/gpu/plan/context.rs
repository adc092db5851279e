//! What the stage builders of one plan share ([`PlanContext`]): the shape, the device and its
//! limits, the allocator, the buffers every stage binds, and the list the dispatches are
//! appended to; and the helpers builders use to make bind groups and dispatch grids.

use super::buffers::{check_binding, max_binding, Allocator, StateBuffers};
use super::{Dispatch, Op, RecurrentKernel};
use crate::error::{LstmError, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::{Kernel, Kernels};
use crate::gpu::params::PARAMS_SIZE;
use crate::gpu::stats::Phase;

/// The state of one plan being built: read by every stage builder, and the list of
/// operations they append to.
pub(crate) struct PlanContext<'a, 'p> {
    pub ctx: &'a GpuContext,
    pub kernels: &'a Kernels,
    pub(super) alloc: Allocator<'p>,
    /// The state buffer pairs of the recurrent directions (a TimeDistributed layer swaps in
    /// pairs for its batch x timesteps rows while it plans its inner layer).
    pub states: StateBuffers,
    pub batch: usize,
    /// The batch the recurrent kernel is chosen for (see `PlanKey`).
    pub choice_batch: usize,
    pub kernel_choice: RecurrentKernel,
    pub max_groups: usize,
    /// Bytes between parameter blocks (the uniform offset alignment).
    pub stride: usize,
    /// Stand-ins for unused bindings (the second for read-only vec4 views).
    pub dummy: wgpu::Buffer,
    pub dummy_vec4: wgpu::Buffer,
    /// The adapter's loop limit (`gpu::loops`).
    pub loop_cap: Option<u64>,
    /// What the forward records, in order.
    pub(super) ops: Vec<Op>,
    /// Buffers zeroed before the pass.
    pub(super) clears: Vec<wgpu::Buffer>,
    /// Copies after the pass (source, destination): a stateful direction's final state into
    /// the buffer the next call reads.
    pub(super) carries: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    pub(super) projection_chunks: u32,
    /// The recurrent directions (state pairs) planned so far: a direction called again
    /// starts from zeros or its `initial_state`, never from the last call's state.
    pub(super) planned_states: Vec<usize>,
    /// Whether the stage being planned has more than one call in the model (its state
    /// buffers are then reused, so state outputs are copied out).
    pub repeated: bool,
}

impl PlanContext<'_, '_> {
    pub fn device(&self) -> &wgpu::Device {
        self.ctx.device()
    }

    /// A working storage buffer of `size` bytes for `what`, with `usage` besides STORAGE;
    /// an error naming `what` when it exceeds the binding limit.
    pub fn storage(
        &mut self,
        what: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        check_binding(self.ctx, what, size)?;
        // (COPY_SRC always: any tensor may be a model output, read back by a copy)
        Ok(self.alloc.buffer(
            what,
            size,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | usage,
        ))
    }

    /// The largest storage buffer this adapter binds.
    pub fn max_binding(&self) -> u64 {
        max_binding(self.ctx)
    }

    /// A uniform buffer holding `data` (one or more parameter blocks).
    pub fn uniform(&mut self, label: &str, data: &[u8]) -> wgpu::Buffer {
        self.alloc.uniform(label, data)
    }

    /// A storage buffer of `data` for this plan (see `Allocator::constant`), or an error
    /// naming `what` over the binding limit.
    pub fn constant(&mut self, what: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        check_binding(self.ctx, what, 4 * data.len() as u64)?;
        Ok(self.alloc.constant(what, data))
    }

    /// A tensor's values as a mask (1.0 where not 0.0, as the CPU's `bool_mask`), for an
    /// explicit `mask=` argument.
    pub fn as_mask(&mut self, what: &str, t: &super::Tensor) -> Result<wgpu::Buffer> {
        let n = t.len();
        let out = self.storage(what, (4 * n) as u64, wgpu::BufferUsages::empty())?;
        let up = crate::gpu::params::UnaryParams {
            count: n as u32,
            width: 1,
            period: 1,
            ..bytemuck::Zeroable::zeroed()
        };
        self.unary(
            what,
            (3, crate::activation::Activation::Linear),
            up,
            &t.buf,
            None,
            &out,
        )?;
        Ok(out)
    }

    /// The pipeline of `kernel` with no override constants.
    pub fn pipeline(&self, kernel: Kernel) -> Result<wgpu::ComputePipeline> {
        self.kernels.pipeline(self.device(), kernel, &[])
    }

    /// A bind group of `kernel` binding each of `buffers` whole, at bindings 0, 1, ...
    pub fn bind(&self, kernel: Kernel, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(k, b)| entry(k as u32, b.as_entire_binding()))
            .collect();
        self.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name()),
            layout: self.kernels.layout(kernel),
            entries: &entries,
        })
    }

    /// Appends a dispatch of `groups` workgroups.
    pub fn dispatch(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        bind: &wgpu::BindGroup,
        offsets: &[u32],
        groups: (u32, u32),
    ) {
        self.ops.push(Op::Dispatch(Dispatch {
            pipeline: pipeline.clone(),
            bind: bind.clone(),
            offsets: offsets.to_vec(),
            groups,
        }));
    }

    /// Marks the end of a phase of the time profile (the dispatches since the last mark).
    pub fn mark(&mut self, phase: Phase) {
        self.ops.push(Op::Mark(phase));
    }

    /// Zeroes `buffer` before the pass.
    pub fn clear(&mut self, buffer: &wgpu::Buffer) {
        self.clears.push(buffer.clone());
    }

    /// Copies `from` into `to` after the pass (a carried state).
    pub fn carry(&mut self, from: &wgpu::Buffer, to: &wgpu::Buffer) {
        self.carries.push((from.clone(), to.clone()));
    }

    /// Counts projection chunks for the statistics.
    pub fn count_projection_chunks(&mut self, n: usize) {
        self.projection_chunks += n as u32;
    }

    /// A 2-D dispatch grid for `items` one-per-thread items in workgroups of `per_group`;
    /// `what` names the layer in the error when they exceed the adapter's dispatch limit.
    pub fn grid(&self, what: &str, items: usize, per_group: usize) -> Result<(u32, u32)> {
        let groups = items.div_ceil(per_group).max(1);
        let gx = groups.min(self.max_groups);
        let gy = groups.div_ceil(gx);
        if gy > self.max_groups {
            return Err(dispatch_limit(what, groups, self.max_groups));
        }
        Ok((gx as u32, gy as u32))
    }

    /// The grid `(x, y)` as it is, or an error naming `what` when a dimension exceeds the
    /// adapter's dispatch limit.
    pub fn check_groups(&self, what: &str, (x, y): (usize, usize)) -> Result<(u32, u32)> {
        if x > self.max_groups || y > self.max_groups {
            return Err(dispatch_limit(what, x.max(y), self.max_groups));
        }
        Ok((x as u32, y as u32))
    }

    /// The bind group of projection.wgsl (an LSTM's input projection, or a Dense layer):
    /// parameters, input `x` of width `k`, kernel, optional bias, output.
    pub fn projection_bind_group(
        &self,
        label: &str,
        params: &wgpu::Buffer,
        (x, k): (&wgpu::Buffer, usize),
        kernel: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        // The vec4 view of x is read only when k % 4 == 0 (16 bytes stand in otherwise).
        let x4 = if k.is_multiple_of(4) {
            x
        } else {
            &self.dummy_vec4
        };
        self.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: self.kernels.layout(Kernel::Projection),
            entries: &[
                entry(0, params_binding(params)),
                entry(1, x.as_entire_binding()),
                entry(2, kernel.as_entire_binding()),
                entry(3, bias.unwrap_or(&self.dummy).as_entire_binding()),
                entry(4, out.as_entire_binding()),
                entry(5, x4.as_entire_binding()),
            ],
        })
    }
}

/// The binding of one parameter block of `params` (at the dynamic offset a dispatch sets).
pub(crate) fn params_binding(params: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: params,
        offset: 0,
        size: wgpu::BufferSize::new(PARAMS_SIZE),
    })
}

pub(crate) fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

/// `what` needs `groups` workgroups, more than the adapter dispatches (`max` per dimension).
pub(crate) fn dispatch_limit(what: &str, groups: usize, max: usize) -> LstmError {
    LstmError::invalid(
        what,
        format!(
            "needs {groups} workgroups in one dimension of a dispatch, over this adapter's \
             max_compute_workgroups_per_dimension of {max}; use a smaller batch"
        ),
    )
}
