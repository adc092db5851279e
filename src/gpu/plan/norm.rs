//! The plan builder of `LayerNormalization` and `BatchNormalization` at inference
//! (norm.wgsl). CPU twin: `Norm` in src/graph/combine.rs.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{NormParams, NORM_THREADS};
use crate::gpu::stats::Phase;

/// A normalization layer's weights on the GPU (over the last axis of `width` features).
#[derive(Debug)]
pub(crate) struct NormStage {
    pub name: String,
    /// The config's axis (checked to be the last, as on the CPU).
    pub axis: i64,
    pub width: usize,
    pub eps: f32,
    /// LayerNormalization (statistics of each row) or BatchNormalization (moving ones).
    pub layer: bool,
    pub gamma: Option<wgpu::Buffer>,
    pub beta: Option<wgpu::Buffer>,
    pub mean: Option<wgpu::Buffer>,
    pub var: Option<wgpu::Buffer>,
}

impl GpuStage for NormStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let x = args.one(&self.name)?;
        let what = format!("layer {}", self.name);
        crate::graph::last_axis(&self.name, self.axis, x.shape.len())?;
        let has_weights = self.gamma.is_some() || self.beta.is_some() || !self.layer;
        if has_weights && x.width() != self.width {
            return Err(LstmError::shape(
                format!("input of {what}"),
                &[self.width],
                &x.shape,
            ));
        }
        loops::check(&what, loops::norm_iterations(x.width()), cx.loop_cap)?;
        let rows = x.rows();
        let out = cx.storage(&what, (x.len() * 4) as u64, wgpu::BufferUsages::COPY_SRC)?;
        let np = NormParams {
            rows: rows as u32,
            width: x.width() as u32,
            eps: self.eps,
            has_gamma: u32::from(self.gamma.is_some()),
            has_beta: u32::from(self.beta.is_some()),
            ..bytemuck::Zeroable::zeroed()
        };
        let params = cx.uniform("norm parameters", bytemuck::bytes_of(&np));
        let d = cx.dummy_vec4.clone();
        let pick = |b: &Option<wgpu::Buffer>| b.as_ref().unwrap_or(&d).clone();
        let bind = cx.bind(
            Kernel::Norm,
            &[
                &params,
                &x.buf,
                &pick(&self.gamma),
                &pick(&self.beta),
                &pick(&self.mean),
                &pick(&self.var),
                &out,
            ],
        );
        let groups = cx.grid(&what, rows, NORM_THREADS)?;
        let pipeline = cx.kernels.pipeline(
            cx.device(),
            Kernel::Norm,
            &[("LAYER", if self.layer { 1.0 } else { 0.0 })],
        )?;
        cx.dispatch(&pipeline, &bind, &[], groups);
        cx.mark(Phase::Layers);
        Ok(vec![Tensor {
            buf: out,
            offset: 0,
            shape: x.shape.clone(),
            mask: x.mask.clone(),
        }])
    }
}
