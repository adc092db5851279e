//! Weights on the GPU: uploaded once, reordered for the kernels (the input kernel with each
//! projection thread's four columns side by side, the recurrent kernel as a texture of
//! four-gate texels).

use super::context::GpuContext;
use super::params::{PROJECTION_COLUMNS, PROJECTION_THREADS};
use super::plan::{BidiStage, GpuStage, LstmStage};
use crate::config::{Cell, LstmConfig};
use crate::cpu::Lstm;
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::ArrayView2;

/// One LSTM direction's weights on the GPU.
#[derive(Debug)]
pub(crate) struct DirWeights {
    pub(super) config: LstmConfig,
    pub(super) input_dim: usize,
    pub(super) kernel: wgpu::Buffer,
    /// The recurrent kernel as a texture of `H x H` texels, texel (j, k) holding unit j's
    /// four gates for row k (see `recurrent_texture`).
    pub(super) recurrent: wgpu::TextureView,
    pub(super) bias: Option<wgpu::Buffer>,
}

/// The values of `m` in row-major order (Keras's layout, which the kernels read).
pub(crate) fn row_major<T: Element>(m: ArrayView2<T>) -> Vec<f32> {
    m.iter().map(|v| v.to_f64() as f32).collect()
}

/// Uploads `data` into a new storage buffer, checking the binding limit; `name` names the
/// weight in errors.
pub(super) fn upload_f32(
    ctx: &GpuContext,
    name: &str,
    data: &[f32],
    bytes: &mut u64,
) -> Result<wgpu::Buffer> {
    let max = ctx
        .limits()
        .max_storage_buffer_binding_size
        .min(ctx.limits().max_buffer_size);
    let size = (data.len() * 4) as u64;
    if size > max {
        return Err(LstmError::invalid(
            name,
            format!("{size} bytes exceed this adapter's binding limit of {max} bytes"),
        ));
    }
    *bytes += size;
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(name),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue()
        .write_buffer(&buf, 0, bytemuck::cast_slice(data));
    Ok(buf)
}

/// Uploads the recurrent kernel, in the order of [`gates_side_by_side`], as an `H x H`
/// texture of four-float texels. The kernels read it with `textureLoad`: lavapipe builds a
/// texel fetch as a vector gather, where it runs a storage-buffer load as a loop over lanes.
pub(super) fn recurrent_texture(
    ctx: &GpuContext,
    name: &str,
    data: &[f32],
    units: usize,
    bytes: &mut u64,
) -> Result<wgpu::TextureView> {
    let max = ctx.limits().max_texture_dimension_2d as usize;
    let rows = data.len() / (4 * units);
    if rows > max {
        return Err(LstmError::invalid(
            name,
            format!("{units} units exceed this adapter's texture size limit of {max}"),
        ));
    }
    let size = wgpu::Extent3d {
        width: units as u32,
        height: rows as u32,
        depth_or_array_layers: 1,
    };
    let texture = ctx.device().create_texture(&wgpu::TextureDescriptor {
        label: Some(name),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    ctx.queue().write_texture(
        texture.as_image_copy(),
        bytemuck::cast_slice(data),
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some((units * 16) as u32),
            rows_per_image: Some(rows as u32),
        },
        size,
    );
    *bytes += (data.len() * 4) as u64;
    Ok(texture.create_view(&wgpu::TextureViewDescriptor::default()))
}

/// Uploads one direction's weights as f32 (exact for an f32 layer; `new` refuses f64 ones).
pub(super) fn upload_weights<T: Element>(
    ctx: &GpuContext,
    l: &Lstm<T>,
    bytes: &mut u64,
) -> Result<DirWeights> {
    let c = l.config();
    let w = l.weights();
    let name = |what: &str| format!("{}/{what}", c.name);
    let gh = c.cell.gates() * c.units;
    let mut recurrent = gates_side_by_side(w.recurrent_kernel.view(), c.cell.gates());
    if c.cell == (Cell::Gru { reset_after: true }) {
        // One row more: the recurrent bias as texel (j, H) (zero without a bias).
        let mut row = vec![0.0f32; 4 * c.units];
        if let Some(b) = &w.bias {
            for j in 0..c.units {
                for g in 0..3 {
                    row[4 * j + g] = b[gh + g * c.units + j].to_f64() as f32;
                }
            }
        }
        recurrent.extend(row);
    }
    ctx.checked("uploading weights", || {
        Ok(DirWeights {
            config: c.clone(),
            input_dim: l.input_dim(),
            kernel: upload_f32(
                ctx,
                &name("kernel"),
                &projection_order(w.kernel.view()),
                bytes,
            )?,
            recurrent: recurrent_texture(
                ctx,
                &name("recurrent_kernel"),
                &recurrent,
                c.units,
                bytes,
            )?,
            // (the input bias: a GRU's recurrent bias went into the texture)
            bias: match &w.bias {
                Some(b) => Some(upload_f32(
                    ctx,
                    &name("bias"),
                    &row_major(b.slice(ndarray::s![..gh]).insert_axis(ndarray::Axis(0))),
                    bytes,
                )?),
                None => None,
            },
        })
    })?
}

/// A `[K, N]` kernel as projection.wgsl reads it: per row k, groups of 256 columns
/// (`PROJECTION_COLUMNS`), each as 64 vec4s (one per thread) holding columns
/// `(c, c + 64, c + 128, c + 192)` for `c = 256·g + x` (zero past
/// N), so each thread's four columns are one vec4.
pub(crate) fn projection_order<T: Element>(m: ndarray::ArrayView2<T>) -> Vec<f32> {
    let (k, n) = m.dim();
    let (cols, threads) = (PROJECTION_COLUMNS, PROJECTION_THREADS);
    let stride = n.div_ceil(cols) * cols;
    let mut out = vec![0.0f32; k * stride];
    for row in 0..k {
        for col in 0..n {
            let (g, q, x) = (col / cols, (col % cols) / threads, col % threads);
            out[row * stride + (g * threads + x) * 4 + q] = m[[row, col]].to_f64() as f32;
        }
    }
    out
}

/// The recurrent kernel `[H, G·H]` (G gate blocks: i, f, c, o for an LSTM) as step.wgsl and
/// sequence.wgsl read it: `[H][H][4]`, the gates of unit j for row k at `(k·H + j)·4` (zero
/// past the G gates).
pub(super) fn gates_side_by_side<T: Element>(r: ndarray::ArrayView2<T>, gates: usize) -> Vec<f32> {
    let h = r.nrows();
    let mut out = vec![0.0f32; h * 4 * h];
    for k in 0..h {
        for j in 0..h {
            for g in 0..gates {
                out[(k * h + j) * 4 + g] = r[[k, g * h + j]].to_f64() as f32;
            }
        }
    }
    out
}

/// Uploads the weights of a model's layers once, counting their bytes and numbering the
/// recurrent directions (each gets a pair of state buffers).
pub(crate) struct Uploader<'a> {
    pub(crate) ctx: &'a GpuContext,
    pub(crate) bytes: u64,
    pub(crate) directions: usize,
    /// Recurrent stages built now take their input's mask with initial states (Keras 2).
    pub(crate) keras2_call_mask: bool,
}

impl<'a> Uploader<'a> {
    pub(crate) fn new(ctx: &'a GpuContext) -> Self {
        Uploader {
            ctx,
            bytes: 0,
            directions: 0,
            keras2_call_mask: false,
        }
    }

    /// `data` in a new storage buffer named `name`.
    pub(crate) fn floats(&mut self, name: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        let ctx = self.ctx;
        let bytes = &mut self.bytes;
        // (a zero-length weight still binds: one unread value)
        let data = if data.is_empty() { &[0.0][..] } else { data };
        ctx.checked("uploading weights", || upload_f32(ctx, name, data, bytes))?
    }

    /// The stages of `net` (an LSTM/GRU/SimpleRNN, a Bidirectional one or a stack of them).
    pub(crate) fn recurrent<T: Element>(
        &mut self,
        net: &crate::network::Network<T>,
    ) -> Result<Vec<Box<dyn GpuStage>>> {
        use crate::network::Network;
        let direction = |l: &Lstm<T>, up: &mut Self| -> Result<LstmStage> {
            let ctx = up.ctx;
            let bytes = &mut up.bytes;
            let weights = ctx.checked("uploading weights", || upload_weights(ctx, l, bytes))??;
            let stage = LstmStage {
                weights,
                state: up.directions,
                keras2_call_mask: up.keras2_call_mask,
            };
            up.directions += 1;
            Ok(stage)
        };
        Ok(match net {
            Network::Lstm(l) => vec![Box::new(direction(l, self)?)],
            Network::Bidirectional(b) => {
                let fwd = direction(b.forward_layer(), self)?;
                let bwd = direction(b.backward_layer(), self)?;
                vec![Box::new(BidiStage {
                    fwd,
                    bwd,
                    mode: b.merge_mode(),
                })]
            }
            Network::Sequential(layers) => {
                let mut all = Vec::new();
                for l in layers {
                    all.extend(self.recurrent(l)?);
                }
                all
            }
        })
    }
}
