//! The plan builder of Keras `Dense`: the product (projection.wgsl, as an LSTM's input
//! projection) and the activation (dense.wgsl) over every row. CPU twin: `dense_forward` in
//! src/model.rs.

use super::{Args, GpuStage, PlanContext, Tensor};
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
pub(crate) struct DenseStage {
    pub(crate) name: String,
    pub(crate) kernel: wgpu::Buffer,
    pub(crate) bias: Option<wgpu::Buffer>,
    pub(crate) inputs: usize,
    pub(crate) units: usize,
    /// The activation, or None for softmax.
    pub(crate) activation: Option<Activation>,
}

impl DenseStage {
    /// Uploads a Dense layer's `kernel [inputs, units]` and bias; `activation` None is softmax.
    pub(crate) fn upload(
        up: &mut crate::gpu::Uploader<'_>,
        name: &str,
        kernel: ndarray::ArrayView2<f32>,
        bias: Option<ndarray::ArrayView1<f32>>,
        activation: Option<Activation>,
    ) -> Result<Self> {
        use crate::gpu::upload::{projection_order, row_major};
        Ok(DenseStage {
            name: name.to_string(),
            kernel: up.floats(&format!("{name}/kernel"), &projection_order(kernel))?,
            bias: match bias {
                Some(b) => Some(up.floats(
                    &format!("{name}/bias"),
                    &row_major(b.insert_axis(ndarray::Axis(0))),
                )?),
                None => None,
            },
            inputs: kernel.nrows(),
            units: kernel.ncols(),
            activation,
        })
    }
}

impl GpuStage for DenseStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let input = args.one(&self.name)?;
        if input.width() != self.inputs || input.shape.len() < 2 {
            return Err(LstmError::shape(
                format!("input of layer {}", self.name),
                &[self.inputs],
                &input.shape,
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
        let rows = input.rows();
        let t_rows = rows / cx.batch.max(1);
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
        let mut shape = input.shape.clone();
        *shape.last_mut().expect("at least 2-D") = self.units;
        Ok(vec![Tensor {
            buf: out,
            offset: 0,
            shape,
            mask: input.mask.clone(),
        }])
    }
}
