//! The plan builder of an application's custom layer with a GPU kernel
//! ([`crate::custom::GpuKernel`]): its WGSL compiled once with the fixed bindings of
//! [`crate::custom::GPU_KERNEL_PRELUDE`], its weights uploaded once, one dispatch per call.
//! CPU twin: the application's `CustomLayer::call`.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::custom::{GpuKernel, GroupsFn, ShapeFn};
use crate::error::{LstmError, Result};
use crate::gpu::stats::Phase;
use crate::gpu::Uploader;

/// The `CustomShape` uniform of a custom kernel (declared in `GPU_KERNEL_PRELUDE`; checked
/// against it by the test below): the input's shape.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CustomShape {
    pub dims: [u32; 4],
    pub rank: u32,
    pub has_mask: u32,
    pub _pad: [u32; 2],
}

pub(crate) struct CustomStage {
    name: String,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    weights: wgpu::Buffer,
    input: usize,
    keeps_mask: bool,
    output_shape: Box<ShapeFn>,
    groups: Box<GroupsFn>,
}

impl std::fmt::Debug for CustomStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomStage")
            .field("name", &self.name)
            .finish()
    }
}

fn buffer_entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

impl CustomStage {
    /// Compiles `kernel` for layer `name`; a WGSL or binding error is an error naming it.
    pub(crate) fn new(up: &mut Uploader<'_>, name: &str, kernel: GpuKernel) -> Result<Self> {
        let ctx = up.ctx;
        let device = ctx.device();
        let read = wgpu::BufferBindingType::Storage { read_only: true };
        let entries = [
            buffer_entry(0, read),
            buffer_entry(1, wgpu::BufferBindingType::Storage { read_only: false }),
            buffer_entry(2, read),
            buffer_entry(3, read),
            buffer_entry(4, wgpu::BufferBindingType::Uniform),
        ];
        let what = format!("compiling the GPU kernel of custom layer {name}");
        let (layout, pipeline) = ctx.checked(&what, || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(kernel.wgsl.clone().into()),
            });
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(name),
                entries: &entries,
            });
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: Some(&pl),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            (layout, pipeline)
        })?;
        let weights = up.floats(&format!("{name} weights"), &kernel.weights)?;
        Ok(CustomStage {
            name: name.to_string(),
            pipeline,
            layout,
            weights,
            input: kernel.input,
            keeps_mask: kernel.keeps_mask,
            output_shape: kernel.output_shape,
            groups: kernel.groups,
        })
    }
}

impl GpuStage for CustomStage {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let what = format!("custom layer {}", self.name);
        let x = args.inputs.get(self.input).ok_or_else(|| {
            LstmError::invalid(
                &what,
                format!(
                    "its GPU kernel reads input {}, the call has {}",
                    self.input,
                    args.inputs.len()
                ),
            )
        })?;
        if x.shape.len() > 4 {
            return Err(LstmError::UnsupportedOnPath {
                what: format!("{what}: an input of rank {}", x.shape.len()),
                path: "gpu".into(),
                hint: "a custom kernel reads inputs of at most 4 axes; run this model on the \
                       CPU path"
                    .into(),
            });
        }
        let shape = (self.output_shape)(&x.shape)?;
        let n: usize = shape.iter().product();
        let out = cx.storage(&what, (4 * n.max(1)) as u64, wgpu::BufferUsages::COPY_DST)?;
        cx.clear(&out);
        let mut dims = [1u32; 4];
        for (d, &s) in dims.iter_mut().zip(&x.shape) {
            *d = u32::try_from(s).map_err(|_| LstmError::invalid(&what, "an axis over 2^32"))?;
        }
        let uniform = CustomShape {
            dims,
            rank: x.shape.len() as u32,
            has_mask: u32::from(x.mask.is_some()),
            _pad: [0; 2],
        };
        let params = cx.uniform(&what, bytemuck::bytes_of(&uniform));
        let no_mask;
        let mask = match &x.mask {
            Some(m) => m,
            None => {
                no_mask = cx.constant(&format!("{what} mask"), &[1.0])?;
                &no_mask
            }
        };
        let buffers = [&x.buf, &out, &self.weights, mask, &params];
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(k, b)| wgpu::BindGroupEntry {
                binding: k as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let bind = cx.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&self.name),
            layout: &self.layout,
            entries: &entries,
        });
        let (gx, gy) = (self.groups)(&x.shape);
        let groups = cx.check_groups(&what, (gx as usize, gy as usize))?;
        cx.dispatch(&self.pipeline, &bind, &[], groups);
        cx.mark(Phase::Layers);
        Ok(vec![Tensor {
            buf: out,
            offset: 0,
            shape,
            mask: if self.keeps_mask {
                x.mask.clone()
            } else {
                None
            },
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::CustomShape;
    use std::mem::{offset_of, size_of};

    #[test]
    fn the_prelude_struct_is_the_rust_one() {
        let body = "@compute @workgroup_size(1) fn main() { y[0] = x[0] + w[0] + mask[0] + f32(shape.rank); }";
        let src = format!("{}{body}", crate::custom::GPU_KERNEL_PRELUDE);
        let m = naga::front::wgsl::parse_str(&src).expect("the prelude parses");
        let (_, ty) = m
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("CustomShape"))
            .expect("CustomShape");
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("CustomShape is not a struct");
        };
        assert_eq!(*span as usize, size_of::<CustomShape>());
        let offsets: Vec<usize> = members.iter().map(|m| m.offset as usize).collect();
        assert_eq!(
            offsets[..3],
            [
                offset_of!(CustomShape, dims),
                offset_of!(CustomShape, rank),
                offset_of!(CustomShape, has_mask)
            ]
        );
        // the bindings' order: x, y, w, mask, shape
        let names: Vec<(&str, u32)> = m
            .global_variables
            .iter()
            .filter_map(|(_, g)| Some((g.name.as_deref()?, g.binding.as_ref()?.binding)))
            .collect();
        assert_eq!(
            names,
            [("x", 0), ("y", 1), ("w", 2), ("mask", 3), ("shape", 4)]
        );
    }
}
