//! The plan builder of the pooling layers over time (pool.wgsl): `MaxPooling1D`,
//! `AveragePooling1D`, `GlobalMaxPooling1D`, `GlobalAveragePooling1D` (masked mean).
//! CPU twins: `Pool` in src/graph/conv.rs, `GlobalPool` in src/graph/combine.rs.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::error::Result;
use crate::gpu::kernels::Kernel;
use crate::gpu::loops;
use crate::gpu::params::{PoolParams, POOL_THREADS};
use crate::gpu::stats::Phase;

/// A pooling layer: a window (`size`, `stride`, `padding`) or the whole sequence (`None`).
#[derive(Debug)]
pub(crate) struct PoolStage {
    pub name: String,
    pub max: bool,
    /// `(size, stride, padding)` of a window pool; None for a global one.
    pub window: Option<(usize, usize, String)>,
    /// A global pool's `keepdims`.
    pub keepdims: bool,
}

impl GpuStage for PoolStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let x = args.one(&self.name)?;
        let what = format!("layer {}", self.name);
        let (b, t, c) = x.dims3(&format!("input of {what}"))?;
        let (size, stride, left, out_len) = match &self.window {
            Some((size, stride, padding)) => {
                let (left, out_len) = crate::graph::window(padding, t, *size, *stride)?;
                (*size, *stride, left, out_len)
            }
            None => (t, 1, 0, 1),
        };
        loops::check(&what, loops::pool_iterations(size), cx.loop_cap)?;
        // The global average is masked (an explicit mask= first); the others ignore masks.
        let mask = match (&self.window, self.max) {
            (None, false) => match args.mask {
                Some(m) => Some(cx.as_mask(&format!("mask of {what}"), m)?),
                None => x.mask.clone(),
            },
            _ => None,
        };
        let out = cx.storage(
            &what,
            (b * out_len * c * 4) as u64,
            wgpu::BufferUsages::COPY_SRC,
        )?;
        let pp = PoolParams {
            batch: b as u32,
            steps: t as u32,
            channels: c as u32,
            out_len: out_len as u32,
            size: size as u32,
            stride: stride as u32,
            left: left as u32,
            _pad0: 0,
        };
        let params = cx.uniform("pool parameters", bytemuck::bytes_of(&pp));
        let m = mask.clone().unwrap_or_else(|| cx.dummy_vec4.clone());
        let bind = cx.bind(Kernel::Pool, &[&params, &x.buf, &m, &out]);
        let groups = cx.grid(&what, b * out_len * c, POOL_THREADS)?;
        let flag = |v: bool| if v { 1.0 } else { 0.0 };
        let pipeline = cx.kernels.pipeline(
            cx.device(),
            Kernel::Pool,
            &[("MAX", flag(self.max)), ("MASKED", flag(mask.is_some()))],
        )?;
        cx.dispatch(&pipeline, &bind, &[], groups);
        cx.mark(Phase::Layers);
        let shape = match (&self.window, self.keepdims) {
            (Some(_), _) => vec![b, out_len, c],
            (None, true) => vec![b, 1, c],
            (None, false) => vec![b, c],
        };
        Ok(vec![Tensor {
            buf: out,
            offset: 0,
            shape,
            mask: None,
        }])
    }
}
