//! The plan builder of Keras `Dense`: the product (projection.wgsl, as an LSTM's input
//! projection) and the activation (dense.wgsl) over every row. CPU twin: `dense_forward` in
//! src/model.rs.

use super::{GpuStage, Output, PlanContext, Planned, Tensor};
use crate::activation::Activation;
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{
    DenseParams, ProjParams, DENSE_THREADS, PROJECTION_COLUMNS, PROJECTION_ROWS,
};
use crate::gpu::stats::Phase;

/// A Dense layer's weights on the GPU.
#[derive(Debug)]
pub(in crate::gpu) struct DenseStage {
    pub(in crate::gpu) name: String,
    pub(in crate::gpu) kernel: wgpu::Buffer,
    pub(in crate::gpu) bias: Option<wgpu::Buffer>,
    pub(in crate::gpu) inputs: usize,
    pub(in crate::gpu) units: usize,
    /// The activation, or None for softmax.
    pub(in crate::gpu) activation: Option<Activation>,
}

impl GpuStage for DenseStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, input: &Tensor) -> Result<Planned> {
        if input.width != self.inputs {
            return Err(LstmError::shape(
                format!("{}/kernel", self.name),
                &[input.width, self.units],
                &[self.inputs, self.units],
            ));
        }
        let what = format!(
            "Dense layer {} ({} inputs, {} units)",
            self.name, self.inputs, self.units
        );
        loops::check(
            &what,
            loops::projection_iterations(self.inputs).max(loops::dense_iterations(
                self.units,
                self.activation.is_none(),
            )),
            cx.loop_cap,
        )?;
        let t_rows = input.rows(cx.steps);
        let rows = cx.batch * t_rows;
        let out = cx.storage(
            "Dense output",
            (rows * self.units * 4) as u64,
            wgpu::BufferUsages::COPY_SRC,
        )?;
        let pp = ProjParams {
            rows: rows as u32,
            k: self.inputs as u32,
            n: self.units as u32,
            tc: t_rows as u32,
            seq_len: t_rows as u32,
            t_lo: 0,
            has_bias: u32::from(self.bias.is_some()),
            _pad: 0,
        };
        let params = cx.uniform("dense parameters", bytemuck::bytes_of(&pp));
        let bind = cx.projection_bind_group(
            "dense",
            &params,
            (&input.buf, self.inputs),
            &self.kernel,
            self.bias.as_ref(),
            &out,
        );
        let groups = cx.check_groups(
            &what,
            (
                self.units.div_ceil(PROJECTION_COLUMNS),
                rows.div_ceil(PROJECTION_ROWS),
            ),
        )?;
        let pipeline = cx.pipeline(Kernel::Projection)?;
        cx.dispatch(&pipeline, &bind, &[0], groups);
        if self.activation != Some(Activation::Linear) {
            let dp = DenseParams {
                rows: rows as u32,
                n: self.units as u32,
                ..bytemuck::Zeroable::zeroed()
            };
            let act_params = cx.uniform("dense activation parameters", bytemuck::bytes_of(&dp));
            let act_bind = cx.bind(Kernel::Dense, &[&act_params, &out]);
            let pipeline = cx.kernels.dense(cx.device(), self.activation)?;
            let groups = cx.grid(&what, rows, DENSE_THREADS)?;
            cx.dispatch(&pipeline, &act_bind, &[], groups);
        }
        cx.mark(Phase::Layers);
        let next = Tensor {
            buf: out,
            width: self.units,
            sequence: input.sequence,
            masked: input.masked,
        };
        let outputs = vec![Output::tensor(&next, cx.batch, cx.steps)];
        Ok(Planned { next, outputs })
    }
}
