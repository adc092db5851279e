//! The plan builder of the pooling layers (pool.wgsl): `MaxPooling1D`/`2D`,
//! `AveragePooling1D`/`2D`, `GlobalMaxPooling1D`/`2D`, `GlobalAveragePooling1D` (masked
//! mean) and `GlobalAveragePooling2D`. CPU twins: `Pool` in src/graph/conv.rs, `GlobalPool`
//! in src/graph/combine.rs.

use super::conv::{spatial_dims, spatial_shape};
use super::{Args, GpuStage, PlanContext, Tensor};
use crate::error::{LstmError, Result};
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{PoolParams, POOL_THREADS};
use crate::gpu::stats::Phase;
use crate::graph::Window2;

/// A pooling layer: a window (its rank and geometry) or the whole input (`None`).
#[derive(Debug)]
pub(crate) struct PoolStage {
    pub name: String,
    pub max: bool,
    /// `(rank, window)` of a window pool; None for a global one.
    pub window: Option<(usize, Window2)>,
    /// A global pool's `keepdims`.
    pub keepdims: bool,
    /// A global pool over `[B, H, W, C]` (`GlobalMaxPooling2D`, ...) instead of `[B, T, C]`.
    pub spatial: bool,
}

impl GpuStage for PoolStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let x = args.one(&self.name)?;
        let what = format!("layer {}", self.name);
        let input = format!("input of {what}");
        let (dims, size, stride, before, out) = match &self.window {
            Some((rank, win)) => {
                let [b, h, w, c] = spatial_dims(x, *rank, &input)?;
                let place = win.place([h, w])?;
                ([b, h, w, c], win.size, win.stride, place.before, place.out)
            }
            None => {
                let [b, h, w, c] = match (self.spatial, &x.shape[..]) {
                    (false, &[b, t, c]) => [b, 1, t, c],
                    (true, &[b, h, w, c]) => [b, h, w, c],
                    _ => {
                        let want = vec![0; if self.spatial { 4 } else { 3 }];
                        return Err(LstmError::shape(input, &want, &x.shape));
                    }
                };
                ([b, h, w, c], [h, w], [1, 1], [0, 0], [1, 1])
            }
        };
        let [b, h, w, c] = dims;
        loops::check(&what, loops::pool_iterations(size), cx.loop_cap)?;
        // The global average over time is masked (an explicit mask= first); the others
        // ignore masks.
        let mask = match (&self.window, self.max, self.spatial) {
            (None, false, false) => match args.mask {
                Some(m) => Some(cx.as_mask(&format!("mask of {what}"), m)?),
                None => x.mask.clone(),
            },
            _ => None,
        };
        let n_out = b * out[0] * out[1] * c;
        let out_buf = cx.storage(&what, (n_out * 4) as u64, wgpu::BufferUsages::COPY_SRC)?;
        let pp = PoolParams {
            batch: b as u32,
            in_h: h as u32,
            in_w: w as u32,
            channels: c as u32,
            out_h: out[0] as u32,
            out_w: out[1] as u32,
            size_h: size[0] as u32,
            size_w: size[1] as u32,
            stride_h: stride[0] as u32,
            stride_w: stride[1] as u32,
            top: before[0] as u32,
            left: before[1] as u32,
        };
        let params = cx.uniform("pool parameters", bytemuck::bytes_of(&pp));
        let m = mask.clone().unwrap_or_else(|| cx.dummy_vec4.clone());
        let bind = cx.bind(Kernel::Pool, &[&params, &x.buf, &m, &out_buf]);
        let groups = cx.grid(&what, n_out, POOL_THREADS)?;
        let flag = |v: bool| if v { 1.0 } else { 0.0 };
        let pipeline = cx.kernels.pipeline(
            cx.device(),
            Kernel::Pool,
            &[("MAX", flag(self.max)), ("MASKED", flag(mask.is_some()))],
        )?;
        cx.dispatch(&pipeline, &bind, &[], groups);
        cx.mark(Phase::Layers);
        let shape = match (&self.window, self.keepdims, self.spatial) {
            (Some((rank, _)), _, _) => spatial_shape(*rank, b, out, c),
            (None, true, true) => vec![b, 1, 1, c],
            (None, true, false) => vec![b, 1, c],
            (None, false, _) => vec![b, c],
        };
        Ok(vec![Tensor {
            buf: out_buf,
            offset: 0,
            shape,
            mask: None,
        }])
    }
}
