//! The plan builder of a Bidirectional layer: both directions (as `lstm.rs` plans them), then
//! their merge into one tensor (concat, sum, mul, ave; `None` as concat, split on the host).
//! Kernel: merge.wgsl; CPU twin: `merge_directions` in src/network.rs.

use super::gather::Gather;
use super::lstm::{recurrent_args, state_outputs, LstmStage, RecurrentArgs};
use super::{Args, GpuStage, PlanContext, Tensor};
use crate::config::{LstmConfig, MergeMode};
use crate::error::LstmError;
use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::gpu::params::{MergeParams, MERGE_THREADS};
use crate::gpu::stats::Phase;

/// A Bidirectional layer: its two directions and how their outputs merge.
#[derive(Debug)]
pub(crate) struct BidiStage {
    pub(crate) fwd: LstmStage,
    pub(crate) bwd: LstmStage,
    pub(crate) mode: MergeMode,
}

impl GpuStage for BidiStage {
    fn directions(&self) -> Vec<&LstmConfig> {
        vec![&self.fwd.weights.config, &self.bwd.weights.config]
    }

    fn state_slots(&self) -> Vec<(usize, usize)> {
        [&self.fwd, &self.bwd]
            .iter()
            .flat_map(|d| d.state_slots())
            .collect()
    }

    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let (f, b) = (&self.fwd.weights.config, &self.bwd.weights.config);
        let RecurrentArgs { x, init, out_mask } =
            recurrent_args(cx, args, &f.name, self.fwd.keras2_call_mask)?;
        // initial_state: the forward direction's states, then the backward's
        let nf = if init.is_empty() { 0 } else { f.cell.states() };
        if !init.is_empty() && init.len() != nf + b.cell.states() {
            return Err(LstmError::invalid(
                format!("initial_state of layer {}", f.name),
                format!(
                    "expected {} tensors, got {}",
                    nf + b.cell.states(),
                    init.len()
                ),
            ));
        }
        let fp = self.fwd.plan_direction(cx, &x, &init[..nf])?;
        let bp = self.bwd.plan_direction(cx, &x, &init[nf..])?;
        let (hf, hb) = (f.units, b.units);
        let seqs = f.return_sequences;
        let batch = cx.batch;
        let steps = x.shape[1];
        let t_out = if seqs { steps } else { 1 };
        let width = match self.mode {
            MergeMode::Concat | MergeMode::None => hf + hb,
            _ => hf,
        };
        let out = merge_rows(
            cx,
            self.mode,
            (&fp.out, &bp.out),
            MergeParams {
                batch: batch as u32,
                steps: t_out as u32,
                units_fwd: hf as u32,
                units_bwd: hb as u32,
                flip: u32::from(seqs),
                width: width as u32,
                _pad0: 0,
                _pad1: 0,
            },
        )?;
        let shape = |w: usize| {
            if seqs {
                vec![batch, steps, w]
            } else {
                vec![batch, w]
            }
        };
        let mask = if seqs { out_mask } else { None };
        let mut outputs = if self.mode == MergeMode::None {
            // Keras returns the two directions as two outputs: the halves of the concat.
            let full = shape(width);
            let rows = batch * t_out;
            let mut halves = Vec::new();
            for (lo, w) in [(0, hf), (hf, hb)] {
                let g = Gather {
                    dims: vec![rows, w],
                    out_stride: vec![w, 1],
                    out_base: 0,
                    in_stride: vec![width, 1],
                    in_base: lo,
                    in_dims: vec![rows, w],
                    pad: vec![0, 0],
                    div: vec![1, 1],
                };
                let mut t = cx.gathered("Bidirectional half", &out, shape(w), &g)?;
                t.mask = mask.clone();
                halves.push(t);
            }
            debug_assert_eq!(full.iter().product::<usize>(), rows * width);
            halves
        } else {
            vec![Tensor {
                buf: out,
                offset: 0,
                shape: shape(width),
                mask,
            }]
        };
        cx.mark(Phase::Merge);
        if f.return_state {
            outputs.extend(state_outputs(cx, &fp.state, f)?);
            outputs.extend(state_outputs(cx, &bp.state, b)?);
        }
        Ok(outputs)
    }
}

/// One merge.wgsl dispatch: `fwd` and `bwd` rows (`p.batch · p.steps` of them, the backward
/// steps flipped when `p.flip`) merged by `mode` into a new buffer of `p.width` per row.
pub(crate) fn merge_rows(
    cx: &mut PlanContext<'_, '_>,
    mode: MergeMode,
    (fwd, bwd): (&wgpu::Buffer, &wgpu::Buffer),
    p: MergeParams,
) -> Result<wgpu::Buffer> {
    let n = p.batch as usize * p.steps as usize * p.width as usize;
    let out = cx.storage(
        "merged output",
        (n * 4) as u64,
        wgpu::BufferUsages::COPY_SRC,
    )?;
    let params = cx.uniform("merge parameters", bytemuck::bytes_of(&p));
    let bind = cx.bind(Kernel::Merge, &[&params, fwd, bwd, &out]);
    let groups = cx.grid("Bidirectional merge", n, MERGE_THREADS)?;
    let pipeline = cx.kernels.merge(cx.device(), mode)?;
    cx.dispatch(&pipeline, &bind, &[], groups);
    Ok(out)
}
