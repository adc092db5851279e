//! Where a plan's buffers come from: the working buffers pooled across the shapes of a
//! network ([`BufferPool`]), the parameter blocks each plan owns ([`Allocator`]), and the
//! carried states of the recurrent directions ([`StateBuffers`]).

use crate::error::{LstmError, Result};
use crate::gpu::context::GpuContext;
use std::collections::HashMap;

/// The working buffers (inputs, projections, sequences, outputs, readback) shared by every
/// cached plan of a network: a plan asks for its n-th buffer of a kind and size, and gets the
/// pool's buffer of that kind when it is large enough, else a new one (at least twice the old
/// size, so a growing shape reallocates a logarithmic number of times) that replaces it. The
/// kernels bind whole buffers and read only the shape's part (their parameters carry the
/// shape), so one buffer serves every shape that fits it. Plans run one at a time (a forward
/// waits for the one before it), so sharing is safe.
#[derive(Default)]
pub(crate) struct BufferPool {
    pub(crate) slots: HashMap<(String, u32, u32), wgpu::Buffer>,
}

/// Creates a plan's buffers: working buffers from the pool, parameter blocks its own.
pub(crate) struct Allocator<'a> {
    ctx: &'a GpuContext,
    pool: &'a mut BufferPool,
    /// How many buffers of each (label, usage) this plan has asked for so far.
    ordinals: HashMap<(String, u32), u32>,
    /// Every buffer the plan references.
    pub(super) held: Vec<wgpu::Buffer>,
    /// Buffers created for this plan.
    pub(super) created: u32,
    pub(super) params_bytes: u64,
}

impl<'a> Allocator<'a> {
    pub(super) fn new(ctx: &'a GpuContext, pool: &'a mut BufferPool) -> Self {
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
    pub(super) fn buffer(
        &mut self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
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
        let max = if usage.contains(wgpu::BufferUsages::STORAGE) {
            max_binding(self.ctx)
        } else {
            self.ctx.limits().max_buffer_size
        };
        let grown = old.map_or(size, |b| (2 * b.size()).min(max).max(size));
        let buf = self.create(label, grown, usage);
        self.pool.slots.insert(key, buf.clone());
        buf
    }

    /// A read-only storage buffer holding `data` (values a plan derives for its shape, such
    /// as a broadcast weight), written once per plan.
    pub(super) fn constant(&mut self, label: &str, data: &[f32]) -> wgpu::Buffer {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let buf = self.create(label, (4 * data.len() as u64).max(4), usage);
        self.ctx
            .queue()
            .write_buffer(&buf, 0, bytemuck::cast_slice(data));
        self.params_bytes += 4 * data.len() as u64;
        buf
    }

    /// A uniform buffer holding `data` (parameter blocks, written once per plan).
    pub(super) fn uniform(&mut self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
        let buf = self.create(label, (data.len() as u64).max(4), usage);
        self.ctx.queue().write_buffer(&buf, 0, data);
        self.params_bytes += data.len() as u64;
        buf
    }
}

/// The largest storage buffer this adapter binds.
pub(crate) fn max_binding(ctx: &GpuContext) -> u64 {
    let l = ctx.limits();
    l.max_storage_buffer_binding_size.min(l.max_buffer_size)
}

/// A buffer over an adapter limit (before batch chunking is tried).
pub(crate) fn limit_error(what: &str, need: u64, max: u64, limit: &str) -> LstmError {
    LstmError::Limit {
        what: what.into(),
        need,
        max,
        limit: limit.into(),
        hint: "use a smaller batch or fewer timesteps per call".into(),
    }
}

/// `what` of `size` bytes must fit one storage binding.
pub(crate) fn check_binding(ctx: &GpuContext, what: &str, size: u64) -> Result<()> {
    let max = max_binding(ctx);
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

/// The carried h/c buffers of every recurrent direction: a ping-pong pair each, `[h | c]`
/// with `[B, H]` each; the state lives in `[0]` between calls.
#[derive(Clone)]
pub(crate) struct StateBuffers {
    pub(crate) batch: usize,
    pub(crate) dirs: Vec<[wgpu::Buffer; 2]>,
    pub(crate) bytes: u64,
}

impl StateBuffers {
    /// The pairs for a batch of `batch` rows, one per direction of `units` units.
    pub(crate) fn new(ctx: &GpuContext, batch: usize, units: &[usize]) -> Result<Self> {
        let mut bytes = 0;
        let dirs = units
            .iter()
            .map(|&h| {
                let size = (2 * batch * h * 4) as u64;
                check_binding(ctx, "state (h, c)", size)?;
                Ok([0, 1].map(|k| {
                    bytes += size;
                    ctx.device().create_buffer(&wgpu::BufferDescriptor {
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
