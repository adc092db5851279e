//! The plan builder of a Bidirectional layer: both directions (as `lstm.rs` plans them), then
//! their merge into one tensor (concat, sum, mul, ave; `None` as concat, split on the host).
//! Kernel: merge.wgsl; CPU twin: `merge_directions` in src/network.rs.

use super::lstm::{state_outputs, LstmStage};
use super::{GpuStage, Output, PlanContext, Planned, Tensor};
use crate::config::{LstmConfig, MergeMode};
use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::gpu::params::{MergeParams, MERGE_THREADS};
use crate::gpu::stats::Phase;

/// A Bidirectional layer: its two directions and how their outputs merge.
#[derive(Debug)]
pub(in crate::gpu) struct BidiStage {
    pub(in crate::gpu) fwd: LstmStage,
    pub(in crate::gpu) bwd: LstmStage,
    pub(in crate::gpu) mode: MergeMode,
}

impl GpuStage for BidiStage {
    fn directions(&self) -> Vec<&LstmConfig> {
        vec![&self.fwd.weights.config, &self.bwd.weights.config]
    }

    fn plan(&self, cx: &mut PlanContext<'_, '_>, input: &Tensor) -> Result<Planned> {
        let fp = self.fwd.plan_direction(cx, input)?;
        let bp = self.bwd.plan_direction(cx, input)?;
        let (f, b) = (&self.fwd.weights.config, &self.bwd.weights.config);
        let (hf, hb) = (f.units, b.units);
        let seqs = f.return_sequences;
        let batch = cx.batch;
        let t_out = if seqs { cx.steps } else { 1 };
        let width = match self.mode {
            MergeMode::Concat | MergeMode::None => hf + hb,
            _ => hf,
        };
        let out = cx.storage(
            "merged output",
            (batch * t_out * width * 4) as u64,
            wgpu::BufferUsages::COPY_SRC,
        )?;
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
        let params = cx.uniform("merge parameters", bytemuck::bytes_of(&mp));
        let bind = cx.bind(Kernel::Merge, &[&params, &fp.out, &bp.out, &out]);
        let groups = cx.grid("Bidirectional merge", batch * t_out * width, MERGE_THREADS)?;
        let pipeline = cx.kernels.merge(cx.device(), self.mode)?;
        cx.dispatch(&pipeline, &bind, &[], groups);
        cx.mark(Phase::Merge);

        let next = Tensor {
            buf: out,
            width,
            sequence: seqs,
            masked: input.masked && seqs,
        };
        let mut whole = Output::tensor(&next, batch, cx.steps);
        if self.mode == MergeMode::None {
            // Keras returns the two directions as two outputs.
            whole.cols = vec![Some(0..hf), Some(hf..width)];
        }
        let mut outputs = vec![whole];
        if f.return_state {
            outputs.extend(state_outputs(&fp.state, batch, f));
            outputs.extend(state_outputs(&bp.state, batch, b));
        }
        Ok(Planned { next, outputs })
    }
}
