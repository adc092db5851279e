//! The plan builder of a Bidirectional layer's merge: both directions into one tensor
//! (concat, sum, mul, ave; `None` as concat, split on the host). Kernel: merge.wgsl; CPU twin:
//! `merge_directions` in src/network.rs.

use super::{bind_buffers, grid, DirPlan, MergePlan, PlanContext};
use crate::config::MergeMode;
use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::gpu::params::{MergeParams, MERGE_THREADS};

/// Plans the merge of directions `fwd` and `bwd` (planned in `dir_plans`); returns it and its
/// output.
pub(in crate::gpu) fn plan_merge(
    cx: &mut PlanContext<'_, '_>,
    (fwd, bwd, mode): (usize, usize, MergeMode),
    dir_plans: &[Option<DirPlan>],
) -> Result<(MergePlan, (wgpu::Buffer, usize))> {
    let PlanContext {
        net,
        device,
        ref mut alloc,
        batch,
        steps,
        max_groups,
        ..
    } = *cx;
    let storage = wgpu::BufferUsages::STORAGE;
    let (f, b) = (&net.dirs[fwd], &net.dirs[bwd]);
    let (hf, hb) = (f.config.units, b.config.units);
    let seqs = f.config.return_sequences;
    let t_out = if seqs { steps } else { 1 };
    let width = match mode {
        MergeMode::Concat | MergeMode::None => hf + hb,
        _ => hf,
    };
    let out_size = (batch * t_out * width * 4) as u64;
    net.check_binding("merged output", out_size)?;
    let out = alloc.buffer("merged", out_size, storage | wgpu::BufferUsages::COPY_SRC);
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
    let bind = bind_buffers(cx, Kernel::Merge, &[&params_buf, &src(fp), &src(bp), &out]);
    let (gx, gy) = grid(
        "Bidirectional merge",
        batch * t_out * width,
        MERGE_THREADS,
        max_groups,
    )?;
    let merge = MergePlan {
        out: out.clone(),
        bind,
        pipeline: net.kernels.merge(device, mode)?,
        groups: (gx, gy),
    };
    Ok((merge, (out, width)))
}
