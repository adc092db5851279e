//! The plan builder of Keras `Conv1D` (conv1d.wgsl: a tiled implicit GEMM, one dispatch per
//! group). CPU twin: `Conv1D` in src/graph/conv.rs.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::activation::Activation;
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{ConvParams, CONV_TILE};
use crate::gpu::stats::Phase;

/// A Conv1D layer's weights on the GPU: the Keras kernel `[kernel_size, in/groups, filters]`
/// row-major, the bias.
#[derive(Debug)]
pub(crate) struct ConvStage {
    pub name: String,
    pub kernel: wgpu::Buffer,
    pub bias: Option<wgpu::Buffer>,
    pub kernel_size: usize,
    pub channels_per_group: usize,
    pub filters: usize,
    pub groups: usize,
    pub stride: usize,
    pub dilation: usize,
    pub padding: String,
    pub activation: Activation,
}

impl GpuStage for ConvStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let x = args.one(&self.name)?;
        let what = format!("layer {}", self.name);
        let (b, t, cin) = x.dims3(&format!("input of {what}"))?;
        let cg = self.channels_per_group;
        if cin != cg * self.groups {
            return Err(LstmError::shape(
                format!("input of {what}"),
                &[b, t, cg * self.groups],
                &x.shape,
            ));
        }
        let span = self.dilation * (self.kernel_size - 1) + 1;
        let (left, out_len) = crate::graph::window(&self.padding, t, span, self.stride)?;
        loops::check(
            &what,
            loops::conv_iterations(self.kernel_size * cg),
            cx.loop_cap,
        )?;
        let rows = b * out_len;
        let f = self.filters;
        let fg = f / self.groups;
        let out = cx.storage(&what, (rows * f * 4) as u64, wgpu::BufferUsages::COPY_SRC)?;
        let groups = cx.check_groups(&what, (fg.div_ceil(CONV_TILE), rows.div_ceil(CONV_TILE)))?;
        let pipeline = cx.kernels.pipeline(
            cx.device(),
            Kernel::Conv,
            &[("ACTIVATION", f64::from(self.activation.id()))],
        )?;
        let bias = self.bias.clone().unwrap_or_else(|| cx.dummy_vec4.clone());
        for g in 0..self.groups {
            let cp = ConvParams {
                rows: rows as u32,
                out_len: out_len as u32,
                steps: t as u32,
                cin: cin as u32,
                k: (self.kernel_size * cg) as u32,
                cg: cg as u32,
                n: fg as u32,
                filters: f as u32,
                stride: self.stride as u32,
                dilation: self.dilation as u32,
                left: left as u32,
                c0: (g * cg) as u32,
                f0: (g * fg) as u32,
                has_bias: u32::from(self.bias.is_some()),
                _pad0: 0,
                _pad1: 0,
            };
            let params = cx.uniform("conv parameters", bytemuck::bytes_of(&cp));
            let bind = cx.bind(Kernel::Conv, &[&params, &x.buf, &self.kernel, &bias, &out]);
            if rows > 0 && fg > 0 {
                cx.dispatch(&pipeline, &bind, &[], groups);
            }
        }
        cx.mark(Phase::Layers);
        Ok(vec![Tensor {
            buf: out,
            offset: 0,
            shape: vec![b, out_len, f],
            mask: None,
        }])
    }
}
