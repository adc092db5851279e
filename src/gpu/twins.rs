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
    match GpuContext::with_options(&super::GpuOptions::from_env().allow_software(true)) {
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

/// One dispatch of step.wgsl (bindings as `plan/lstm.rs` makes them) for each cell, against
/// the CPU twins of `cpu/reference.rs` and `cpu/cells.rs`: random h (and c), projection rows,
/// recurrent kernel and bias, H on the vec4 path and off it, one masked batch row. A GRU
/// without reset_after runs its two dispatches on the same bindings.
#[test]
fn step_kernel_matches_the_cell_twins() {
    use super::params::{
        StepParams, CELL_GRU, CELL_GRU_CANDIDATE, CELL_GRU_RESET, CELL_LSTM, CELL_SIMPLE_RNN,
        STEP_ROWS, STEP_THREADS,
    };
    use super::upload::gates_side_by_side;
    use crate::config::Cell;
    use crate::cpu::cells::{gru_candidate, gru_cell, gru_reset_gate, rnn_cell};
    use crate::cpu::reference::{cell_update, StepRule};
    use ndarray::Array1;
    let Some(ctx) = ctx("step_kernel_matches_the_cell_twins") else {
        return;
    };
    let device = ctx.device();
    let kernels = ctx.kernels().unwrap();
    let cells = [
        (Cell::Lstm, vec![CELL_LSTM]),
        (Cell::Gru { reset_after: true }, vec![CELL_GRU]),
        (
            Cell::Gru { reset_after: false },
            vec![CELL_GRU_RESET, CELL_GRU_CANDIDATE],
        ),
        (Cell::SimpleRnn, vec![CELL_SIMPLE_RNN]),
    ];
    for (cell, ids) in cells {
        for (b, h) in [(5, 8), (3, 70)] {
            let g = cell.gates();
            let rule = StepRule {
                activation: Activation::Tanh,
                recurrent_activation: Activation::Sigmoid,
                zero_output_for_mask: false,
            };
            let to2 = |a: Array3<f32>, r: usize, c: usize| a.into_shape_with_order((r, c)).unwrap();
            let hs = to2(input(1, b, h, 11), b, h);
            let cs = to2(input(1, b, h, 12), b, h);
            let last = to2(input(1, b, h, 13), b, h);
            let proj = to2(input(1, b, g * h, 14), b, g * h);
            let r = to2(input(1, h, g * h, 15), h, g * h);
            let rb: Array1<f32> = input(1, 1, g * h, 16).into_iter().collect();
            let present = |row: usize| row != 1;
            // CPU: rec = h · R (+ recurrent bias), then the cell and the mask rule.
            let rec = hs.dot(&r);
            let (mut want_h, mut want_c, mut want_out) = (hs.clone(), cs.clone(), last.clone());
            for row in 0..b {
                if !present(row) {
                    continue;
                }
                let x = |k: usize| proj[[row, k]];
                for j in 0..h {
                    let hp = hs[[row, j]];
                    let new = match cell {
                        Cell::Lstm => continue,
                        Cell::Gru { reset_after: true } => gru_cell(
                            rule,
                            [x(j), x(h + j), x(2 * h + j)],
                            [
                                rec[[row, j]] + rb[j],
                                rec[[row, h + j]] + rb[h + j],
                                rec[[row, 2 * h + j]] + rb[2 * h + j],
                            ],
                            hp,
                        ),
                        Cell::Gru { reset_after: false } => {
                            let rh: Vec<f32> = (0..h)
                                .map(|k| {
                                    gru_reset_gate(rule, x(h + k), rec[[row, h + k]], hs[[row, k]])
                                })
                                .collect();
                            let cand: f32 = (0..h).map(|k| rh[k] * r[[k, 2 * h + j]]).sum();
                            gru_candidate(rule, x(j), x(2 * h + j), rec[[row, j]], cand, hp)
                        }
                        Cell::SimpleRnn => rnn_cell(rule, x(j), rec[[row, j]]),
                    };
                    want_h[[row, j]] = new;
                    want_out[[row, j]] = new;
                }
                if cell == Cell::Lstm {
                    let mut z: Vec<f32> = (0..4 * h).map(|k| x(k) + rec[[row, k]]).collect();
                    let (mut hr, mut cr) = (hs.row(row).to_vec(), cs.row(row).to_vec());
                    let mut or = vec![0.0; h];
                    cell_update(rule, &mut z, &mut hr, &mut cr, &mut or, true);
                    want_h.row_mut(row).assign(&Array1::from(hr));
                    want_c.row_mut(row).assign(&Array1::from(cr));
                    want_out.row_mut(row).assign(&Array1::from(or));
                }
            }
            // GPU: the same step through step.wgsl.
            let params = StepParams {
                batch: b as u32,
                units: h as u32,
                tc: 1,
                t_local: 0,
                t_abs: 0,
                s_out: 0,
                seq_len: 1,
                _pad: 0,
            };
            let mut texels = gates_side_by_side(r.view(), g);
            if cell == (Cell::Gru { reset_after: true }) {
                for j in 0..h {
                    texels.extend((0..4).map(|k| if k < 3 { rb[k * h + j] } else { 0.0 }));
                }
            }
            let rows = texels.len() / (4 * h);
            let mut bytes = 0;
            let texture =
                super::upload::recurrent_texture(&ctx, "twin", &texels, h, &mut bytes).unwrap();
            assert_eq!(
                rows,
                h + usize::from(cell == Cell::Gru { reset_after: true })
            );
            let state_in: Vec<f32> = hs.iter().chain(cs.iter()).copied().collect();
            let mask: Vec<u32> = (0..b).map(|row| u32::from(present(row))).collect();
            let bufs = [
                buffer(&ctx, bytemuck::bytes_of(&params), 256),
                floats(&ctx, proj.as_slice().unwrap()),
                buffer(&ctx, bytemuck::cast_slice(&mask), 16),
                floats(&ctx, &state_in),
                floats(&ctx, &vec![0.0; 2 * b * h]),
                floats(&ctx, last.as_slice().unwrap()),
                floats(&ctx, &[0.0; 4]),
                // (the unused vec4 view: bound read-only, so not the read-write stand-in)
                floats(&ctx, &[0.0; 4]),
            ];
            fn e(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
                wgpu::BindGroupEntry { binding, resource }
            }
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("step twin"),
                layout: kernels.layout(Kernel::Step),
                entries: &[
                    e(
                        0,
                        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &bufs[0],
                            offset: 0,
                            size: wgpu::BufferSize::new(super::params::PARAMS_SIZE),
                        }),
                    ),
                    e(1, wgpu::BindingResource::TextureView(&texture)),
                    e(2, bufs[1].as_entire_binding()),
                    e(3, bufs[2].as_entire_binding()),
                    e(4, bufs[3].as_entire_binding()),
                    e(5, bufs[4].as_entire_binding()),
                    e(6, bufs[5].as_entire_binding()),
                    e(7, bufs[6].as_entire_binding()),
                    e(
                        8,
                        if h % 4 == 0 { &bufs[3] } else { &bufs[7] }.as_entire_binding(),
                    ),
                ],
            });
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for &id in &ids {
                    let key = super::kernels::StepKey {
                        activation: rule.activation,
                        recurrent_activation: rule.recurrent_activation,
                        zero_output_for_mask: false,
                        has_mask: true,
                        write_sequence: false,
                        whole_sequence: false,
                        cell: (id, g as u32),
                    };
                    pass.set_pipeline(&kernels.step(device, key).unwrap());
                    pass.set_bind_group(0, &bind, &[0]);
                    pass.dispatch_workgroups(
                        h.div_ceil(STEP_THREADS) as u32,
                        b.div_ceil(STEP_ROWS) as u32,
                        1,
                    );
                }
            }
            let read = |buf: &wgpu::Buffer, n: usize| -> Vec<f32> {
                let staging = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("step twin readback"),
                    size: (4 * n) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut enc = device.create_command_encoder(&Default::default());
                enc.copy_buffer_to_buffer(buf, 0, &staging, 0, (4 * n) as u64);
                ctx.queue().submit([enc.finish()]);
                staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
                device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                let v = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).unwrap());
                staging.unmap();
                v
            };
            ctx.queue().submit([encoder.finish()]);
            let state_out = read(&bufs[4], 2 * b * h);
            let got_last = read(&bufs[5], b * h);
            let what = format!("{cell:?} B={b} H={h}");
            let err_h = max_abs(&state_out[..b * h], want_h.as_slice().unwrap());
            let err_out = max_abs(&got_last, want_out.as_slice().unwrap());
            assert!(
                err_h <= 1e-5 && err_out <= 1e-5,
                "{what}: h {err_h}, output {err_out}"
            );
            if cell == Cell::Lstm {
                let err_c = max_abs(&state_out[b * h..], want_c.as_slice().unwrap());
                assert!(err_c <= 1e-5, "{what}: c {err_c}");
            }
        }
    }
}
