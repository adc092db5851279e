//! The plan builder of Keras `Conv1D` and `Conv2D` (conv.wgsl: a tiled implicit GEMM, one
//! dispatch per group; a 1-D layer is the 2-D one on `[B, 1, T, C]`). CPU twin: `Conv` in
//! src/graph/conv.rs.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::activation::Activation;
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{ConvParams, CONV_TILE};
use crate::gpu::stats::Phase;
use crate::graph::{Placement, Window2};

/// A convolution layer's weights on the GPU: the Keras kernel `[kh, kw, in/groups, filters]`
/// row-major (`kh` = 1 for 1-D), the bias; its geometry.
#[derive(Debug)]
pub(crate) struct ConvStage {
    pub name: String,
    pub kernel: wgpu::Buffer,
    pub bias: Option<wgpu::Buffer>,
    /// 1 (`[B, T, C]` in and out) or 2 (`[B, H, W, C]`).
    pub rank: usize,
    pub channels_per_group: usize,
    pub filters: usize,
    pub groups: usize,
    pub win: Window2,
    pub activation: Activation,
}

/// `[B, H, W, C]` of a rank-`rank` spatial input (`H` = 1 for 1-D), or an error naming `what`.
pub(crate) fn spatial_dims(x: &Tensor, rank: usize, what: &str) -> Result<[usize; 4]> {
    match (rank, &x.shape[..]) {
        (1, &[b, t, c]) => Ok([b, 1, t, c]),
        (2, &[b, h, w, c]) => Ok([b, h, w, c]),
        _ => Err(LstmError::shape(what, &vec![0; rank + 2], &x.shape)),
    }
}

/// The output shape of a rank-`rank` spatial layer: `[b, oh, ow, c]` or `[b, ow, c]`.
pub(crate) fn spatial_shape(rank: usize, b: usize, [oh, ow]: [usize; 2], c: usize) -> Vec<usize> {
    if rank == 1 {
        vec![b, ow, c]
    } else {
        vec![b, oh, ow, c]
    }
}

/// One convolution's weights and shape for [`prepare`]: the kernel `[kh, kw, cg, filters]`,
/// the optional bias, the channels per group, the groups and the filters.
pub(crate) struct ConvWeights<'a> {
    pub kernel: &'a wgpu::Buffer,
    pub bias: Option<&'a wgpu::Buffer>,
    pub channels_per_group: usize,
    pub groups: usize,
    pub filters: usize,
}

/// A prepared dispatch: pipeline, bind group, grid.
pub(crate) type Prepared = (wgpu::ComputePipeline, wgpu::BindGroup, (u32, u32));

/// The dispatches of a convolution of `x` (`[b, h, w, cin]`, placed as `place`) writing
/// `out` (`[b, oh, ow, filters]`): one per group (none when the output is empty), to append
/// once or, reading a buffer that changes between them, again and again.
pub(crate) fn prepare(
    cx: &mut PlanContext<'_, '_>,
    what: &str,
    (x, [b, h, w, cin]): (&wgpu::Buffer, [usize; 4]),
    wts: &ConvWeights<'_>,
    (win, place): (&Window2, Placement),
    activation: Activation,
    out: &wgpu::Buffer,
) -> Result<Vec<Prepared>> {
    let cg = wts.channels_per_group;
    let [kh, kw] = win.size;
    let k = kh * kw * cg;
    loops::check(what, loops::conv_iterations(k), cx.loop_cap)?;
    let [oh, ow] = place.out;
    let rows = b * oh * ow;
    let f = wts.filters;
    let fg = f / wts.groups;
    let groups = cx.check_groups(what, (fg.div_ceil(CONV_TILE), rows.div_ceil(CONV_TILE)))?;
    let pipeline = cx.kernels.pipeline(
        cx.device(),
        Kernel::Conv,
        &[("ACTIVATION", f64::from(activation.id()))],
    )?;
    let bias = wts.bias.cloned().unwrap_or_else(|| cx.dummy_vec4.clone());
    let mut prepared = Vec::new();
    for g in 0..wts.groups {
        let cp = ConvParams {
            rows: rows as u32,
            out_h: oh as u32,
            out_w: ow as u32,
            in_h: h as u32,
            in_w: w as u32,
            cin: cin as u32,
            k: k as u32,
            kw: kw as u32,
            cg: cg as u32,
            n: fg as u32,
            filters: f as u32,
            stride_h: win.stride[0] as u32,
            stride_w: win.stride[1] as u32,
            dil_h: win.dilation[0] as u32,
            dil_w: win.dilation[1] as u32,
            top: place.before[0] as u32,
            left: place.before[1] as u32,
            c0: (g * cg) as u32,
            f0: (g * fg) as u32,
            has_bias: u32::from(wts.bias.is_some()),
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
            _pad3: 0,
        };
        let params = cx.uniform("conv parameters", bytemuck::bytes_of(&cp));
        let bind = cx.bind(Kernel::Conv, &[&params, x, wts.kernel, &bias, out]);
        if rows > 0 && fg > 0 {
            prepared.push((pipeline.clone(), bind, groups));
        }
    }
    Ok(prepared)
}

impl GpuStage for ConvStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let x = args.one(&self.name)?;
        let what = format!("layer {}", self.name);
        let dims = spatial_dims(x, self.rank, &format!("input of {what}"))?;
        let [b, h, w, cin] = dims;
        let cg = self.channels_per_group;
        if cin != cg * self.groups {
            let mut want = x.shape.clone();
            *want.last_mut().expect("a spatial shape") = cg * self.groups;
            return Err(LstmError::shape(
                format!("input of {what}"),
                &want,
                &x.shape,
            ));
        }
        let place = self.win.place([h, w])?;
        let f = self.filters;
        let rows = b * place.out[0] * place.out[1];
        let out = cx.storage(&what, (rows * f * 4) as u64, wgpu::BufferUsages::COPY_SRC)?;
        let wts = ConvWeights {
            kernel: &self.kernel,
            bias: self.bias.as_ref(),
            channels_per_group: cg,
            groups: self.groups,
            filters: f,
        };
        for (pipeline, bind, groups) in prepare(
            cx,
            &what,
            (&x.buf, dims),
            &wts,
            (&self.win, place),
            self.activation,
            &out,
        )? {
            cx.dispatch(&pipeline, &bind, &[], groups);
        }
        cx.mark(Phase::Layers);
        Ok(vec![Tensor {
            buf: out,
            offset: 0,
            shape: spatial_shape(self.rank, b, place.out, f),
            mask: None,
        }])
    }
}
