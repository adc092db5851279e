//! Each GPU kernel on its own against its CPU twin (the networks' tests cover them together):
//! the kernel is dispatched by hand on buffers made here, exactly as a plan binds it.
//! Like the integration tests, these run on lavapipe in CI (`LSTM_WGPU_REQUIRE_GPU=1`) and are
//! skipped elsewhere when no adapter exists.

use super::context::GpuContext;
use super::kernels::Kernel;
use super::params::{
    DenseParams, MergeParams, ProjParams, DENSE_THREADS, MERGE_THREADS, PROJECTION_COLUMNS,
    PROJECTION_ROWS,
};
use super::upload::projection_order;
use crate::activation::Activation;
use crate::config::{LstmConfig, MergeMode};
use crate::weights::LstmWeights;
use ndarray::{Array3, ArrayD};
use std::sync::Arc;

fn ctx(test: &str) -> Option<Arc<GpuContext>> {
    match GpuContext::new() {
        Ok(c) => Some(c),
        Err(e) => {
            if std::env::var("LSTM_WGPU_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: LSTM_WGPU_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            log::warn!("{test} skipped: no GPU adapter ({e})");
            None
        }
    }
}

fn buffer(ctx: &GpuContext, data: &[u8], min: u64) -> wgpu::Buffer {
    let size = (data.len() as u64).max(min).next_multiple_of(16);
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("twin test"),
        size,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::UNIFORM
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    ctx.queue().write_buffer(&buf, 0, data);
    buf
}

fn floats(ctx: &GpuContext, data: &[f32]) -> wgpu::Buffer {
    buffer(ctx, bytemuck::cast_slice(data), 16)
}

/// Dispatches `kernel` with `constants` on `buffers` (binding 0 the parameter block at offset
/// 0, then bindings 1, 2, ...) and reads back `n` floats of `out`.
fn dispatch(
    ctx: &GpuContext,
    kernel: Kernel,
    constants: &[(&'static str, f64)],
    buffers: &[&wgpu::Buffer],
    groups: (u32, u32),
    out: &wgpu::Buffer,
    n: usize,
) -> Vec<f32> {
    let kernels = ctx.kernels().unwrap();
    let device = ctx.device();
    let pipeline = kernels.pipeline(device, kernel, constants).unwrap();
    let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
        .iter()
        .enumerate()
        .map(|(k, b)| wgpu::BindGroupEntry {
            binding: k as u32,
            resource: if k == 0 {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b,
                    offset: 0,
                    size: wgpu::BufferSize::new(super::params::PARAMS_SIZE),
                })
            } else {
                b.as_entire_binding()
            },
        })
        .collect();
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("twin test"),
        layout: kernels.layout(kernel),
        entries: &entries,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("twin test readback"),
        size: (4 * n) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let dynamic = matches!(kernel, Kernel::Projection | Kernel::Step | Kernel::Sequence);
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, if dynamic { &[0] } else { &[] });
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }
    encoder.copy_buffer_to_buffer(out, 0, &staging, 0, (4 * n) as u64);
    ctx.queue().submit([encoder.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let values = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).unwrap());
    staging.unmap();
    values
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn input(b: usize, t: usize, i: usize, seed: u32) -> Array3<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    Array3::from_shape_fn((b, t, i), |_| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    })
}

/// projection.wgsl against `cpu::reference::project_inputs`, with inputs that take the vec4
/// path (I % 4 == 0) and the scalar one, columns past a 256-column group, and rows past a
/// workgroup's 8.
#[test]
fn projection_kernel_matches_project_inputs() {
    let Some(ctx) = ctx("projection_kernel_matches_project_inputs") else {
        return;
    };
    for (b, t, i, h) in [(3, 7, 8, 70), (2, 5, 5, 3), (1, 9, 12, 64)] {
        let config = LstmConfig::new(h);
        let w = LstmWeights::<f32>::random(&config, i, (b * 31 + i) as u64).unwrap();
        let x = input(b, t, i, (t * 7 + h) as u32);
        let want = crate::cpu::reference::project_inputs(x.view(), &w);
        let n = 4 * h;
        let params = ProjParams {
            rows: (b * t) as u32,
            k: i as u32,
            n: n as u32,
            tc: t as u32,
            seq_len: t as u32,
            t_lo: 0,
            has_bias: 1,
            _pad: 0,
        };
        let xs: Vec<f32> = x.iter().copied().collect();
        let x_buf = floats(&ctx, &xs);
        let dummy = floats(&ctx, &[0.0; 4]);
        let bufs = [
            buffer(&ctx, bytemuck::bytes_of(&params), 256),
            x_buf.clone(),
            floats(&ctx, &projection_order(w.kernel.view())),
            floats(&ctx, w.bias.as_ref().unwrap().as_slice().unwrap()),
            floats(&ctx, &vec![0.0; b * t * n]),
            if i % 4 == 0 { x_buf } else { dummy },
        ];
        let refs: Vec<&wgpu::Buffer> = bufs.iter().collect();
        let groups = (
            n.div_ceil(PROJECTION_COLUMNS) as u32,
            (b * t).div_ceil(PROJECTION_ROWS) as u32,
        );
        let got = dispatch(
            &ctx,
            Kernel::Projection,
            &[],
            &refs,
            groups,
            &bufs[4],
            b * t * n,
        );
        let err = max_abs(&got, want.as_slice().unwrap());
        assert!(err <= 1e-5, "B={b} T={t} I={i} H={h}: {err}");
    }
}

/// merge.wgsl against `network::merge_directions`, every merge mode, with and without the
/// backward sequence flipped back.
#[test]
fn merge_kernel_matches_merge_directions() {
    let Some(ctx) = ctx("merge_kernel_matches_merge_directions") else {
        return;
    };
    let (b, t, h) = (3, 5, 6);
    for sequences in [true, false] {
        let shape: Vec<usize> = if sequences { vec![b, t, h] } else { vec![b, h] };
        let steps = if sequences { t } else { 1 };
        let f = input(b, steps, h, 1)
            .into_shape_with_order(shape.clone())
            .unwrap();
        let r = input(b, steps, h, 2)
            .into_shape_with_order(shape.clone())
            .unwrap();
        for (mode, id) in [
            (MergeMode::Concat, 0.0),
            (MergeMode::Sum, 1.0),
            (MergeMode::Mul, 2.0),
            (MergeMode::Ave, 3.0),
        ] {
            let want: ArrayD<f32> =
                crate::network::merge_directions(mode, sequences, vec![f.clone()], vec![r.clone()])
                    .swap_remove(0);
            let width = want.shape()[want.ndim() - 1];
            let params = MergeParams {
                batch: b as u32,
                steps: steps as u32,
                units_fwd: h as u32,
                units_bwd: h as u32,
                flip: u32::from(sequences),
                width: width as u32,
                _pad0: 0,
                _pad1: 0,
            };
            let total = b * steps * width;
            let bufs = [
                buffer(&ctx, bytemuck::bytes_of(&params), 256),
                floats(&ctx, f.as_slice().unwrap()),
                floats(&ctx, r.as_slice().unwrap()),
                floats(&ctx, &vec![0.0; total]),
            ];
            let refs: Vec<&wgpu::Buffer> = bufs.iter().collect();
            let groups = (total.div_ceil(MERGE_THREADS) as u32, 1);
            let got = dispatch(
                &ctx,
                Kernel::Merge,
                &[("MERGE_MODE", id)],
                &refs,
                groups,
                &bufs[3],
                total,
            );
            let err = max_abs(&got, want.as_standard_layout().as_slice().unwrap());
            assert!(err == 0.0, "{mode:?} sequences={sequences}: {err}");
        }
    }
}

/// dense.wgsl's element-wise activations against `Activation::apply`, NaN and ±inf included.
#[test]
fn dense_activation_kernel_matches_activation_apply() {
    let Some(ctx) = ctx("dense_activation_kernel_matches_activation_apply") else {
        return;
    };
    let mut values: Vec<f32> = input(1, 1, 61, 5).iter().map(|v| v * 6.0).collect();
    values.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        100.0,
        -100.0,
        0.0,
        1e30,
    ]);
    let (rows, n) = (4, values.len() / 4);
    let values = &values[..rows * n];
    for a in Activation::ALL {
        let params = DenseParams {
            rows: rows as u32,
            n: n as u32,
            ..bytemuck::Zeroable::zeroed()
        };
        let bufs = [
            buffer(&ctx, bytemuck::bytes_of(&params), 256),
            floats(&ctx, values),
        ];
        let refs: Vec<&wgpu::Buffer> = bufs.iter().collect();
        let groups = (rows.div_ceil(DENSE_THREADS) as u32, 1);
        let constants = [("ACTIVATION", f64::from(a.id())), ("SOFTMAX", 0.0)];
        let got = dispatch(
            &ctx,
            Kernel::Dense,
            &constants,
            &refs,
            groups,
            &bufs[1],
            rows * n,
        );
        for (x, g) in values.iter().zip(&got) {
            let w = a.apply(*x);
            let ok =
                (g.is_nan() && w.is_nan()) || g == &w || (g - w).abs() <= 1e-5 * w.abs().max(1.0);
            assert!(ok, "{a}({x}): GPU {g}, CPU {w}");
        }
    }
}
