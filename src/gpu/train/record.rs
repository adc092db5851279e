//! Recording a training pass: the strided views the products read, the dispatches, their
//! parameter blocks in one uniform buffer, and the products split under the loop limit.

use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::params::{GemmParams, TRAIN_GEMM_TILE};

/// A readback: a buffer, the float to start at, the floats.
pub(super) type Read<'a> = (&'a wgpu::Buffer, usize, usize);

/// A strided view of a buffer for train_gemm.wgsl: element `(r, c)` at `off + r·rs + c·cs`
/// (floats).
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub(super) buf: &'a wgpu::Buffer,
    pub(super) off: usize,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> View<'a> {
    pub(super) fn new(buf: &'a wgpu::Buffer, off: usize, rs: usize, cs: usize) -> Self {
        View { buf, off, rs, cs }
    }
}

/// One dispatch of the pass: its parameter block's offset and its workgroups.
pub(super) enum Work<'a> {
    /// A product: A, B, and C with its offset.
    Gemm {
        at: usize,
        a: &'a wgpu::Buffer,
        b: &'a wgpu::Buffer,
        c: &'a wgpu::Buffer,
        groups: (u32, u32),
    },
    /// A forward or backward timestep.
    Step {
        kernel: Kernel,
        at: usize,
        groups: (u32, u32),
    },
}

/// The pass being recorded: the parameter blocks (one uniform buffer) and the dispatches.
pub(super) struct Recorder<'a> {
    pub(super) align: usize,
    pub(super) uniforms: Vec<u8>,
    pub(super) work: Vec<Work<'a>>,
    pub(super) k_per_dispatch: usize,
    pub(super) max_groups: u32,
}

impl<'a> Recorder<'a> {
    pub(super) fn block(&mut self, bytes: &[u8]) -> usize {
        let at = self.uniforms.len().next_multiple_of(self.align);
        self.uniforms.resize(at, 0);
        self.uniforms.extend_from_slice(bytes);
        at
    }

    pub(super) fn groups(&self, what: &str, x: usize, y: usize) -> Result<(u32, u32)> {
        for n in [x, y] {
            if n > self.max_groups as usize {
                return Err(LstmError::invalid(
                    what,
                    format!(
                        "needs {n} workgroups in one dimension, over this adapter's \
                         max_compute_workgroups_per_dimension of {}; train on fewer batch rows \
                         or shorter sequences per call",
                        self.max_groups
                    ),
                ));
            }
        }
        Ok((x as u32, y as u32))
    }

    /// `C[m, n] (+)= A[m, k] · B[k, n]` from `C`'s float `c_off`, the reduction split into
    /// dispatches of at most `k_per_dispatch` (each after the first accumulates).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        &mut self,
        what: &str,
        (m, n, k): (usize, usize, usize),
        a: View<'a>,
        b: View<'a>,
        (c, c_off): (&'a wgpu::Buffer, usize),
        accumulate: bool,
    ) -> Result<()> {
        let tile = TRAIN_GEMM_TILE;
        let groups = self.groups(what, n.div_ceil(tile), m.div_ceil(tile))?;
        let mut k0 = 0;
        while k0 < k {
            let kc = self.k_per_dispatch.min(k - k0);
            let p = GemmParams {
                m: u32_of(what, m)?,
                n: u32_of(what, n)?,
                k: u32_of(what, kc)?,
                accumulate: u32::from(accumulate || k0 > 0),
                a_off: u32_of(what, a.off + k0 * a.cs)?,
                a_rs: u32_of(what, a.rs)?,
                a_cs: u32_of(what, a.cs)?,
                b_off: u32_of(what, b.off + k0 * b.rs)?,
                b_rs: u32_of(what, b.rs)?,
                b_cs: u32_of(what, b.cs)?,
                c_off: u32_of(what, c_off)?,
                _pad: 0,
            };
            let at = self.block(bytemuck::bytes_of(&p));
            self.work.push(Work::Gemm {
                at,
                a: a.buf,
                b: b.buf,
                c,
                groups,
            });
            k0 += kc;
        }
        Ok(())
    }
}

pub(super) fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| LstmError::invalid(what, format!("an index of {v} is over 2^32")))
}
