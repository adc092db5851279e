//! GRU (both forms) and SimpleRNN: every recorded Keras case on both paths (both GPU
//! recurrent kernels), and the GPU against the CPU over shapes, masks, go_backwards,
//! thousands of steps, NaN/inf inputs and stateful streaming.

use lstm_wgpu::golden::{case_files, check_case_cpu, check_case_gpu_with, cpu_tolerance, Case};
use lstm_wgpu::gpu::{GpuNetwork, RecurrentKernel};
use lstm_wgpu::{
    Activation, BidirectionalConfig, Cell, LayerConfig, LstmConfig, LstmWeights, MergeMode, Network,
};
use ndarray::{Array2, Array3, ArrayD, Axis};

mod common;
use common::{gpu, max_abs, xorshift_input};

const KERNELS: [RecurrentKernel; 2] = [RecurrentKernel::PerStep, RecurrentKernel::WholeSequence];

const CELLS: [Cell; 3] = [
    Cell::Gru { reset_after: true },
    Cell::Gru { reset_after: false },
    Cell::SimpleRnn,
];

fn config(cell: Cell, units: usize) -> LstmConfig {
    LstmConfig::new(units)
        .cell(cell)
        .unit_forget_bias(false)
        .return_sequences(true)
        .return_state(true)
}

/// Row 0: left and right padding; row 1: random gaps; row 2 (if any): fully masked.
fn mask(b: usize, t: usize) -> Array2<bool> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    Array2::from_shape_fn((b, t), |(r, k)| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        match r {
            0 => k >= t / 10 && k < t - t / 7,
            2 => false,
            _ => !s.is_multiple_of(3),
        }
    })
}

#[test]
fn every_recorded_gru_and_simple_rnn_case_matches_keras_on_both_paths() {
    let dir = common::golden_dir("keras-rnn", "LSTM_WGPU_RNN_CASES");
    let files = case_files(&dir).unwrap_or_else(|e| panic!("cases at {}: {e}", dir.display()));
    assert!(
        files.len() >= 42,
        "expected 42 cases, found {}",
        files.len()
    );
    let ctx = gpu("every_recorded_gru_and_simple_rnn_case_matches_keras_on_both_paths");
    let mut failures = Vec::new();
    let (mut worst_cpu, mut worst_gpu) = (0.0f64, 0.0f64);
    for f in &files {
        let case = Case::load(f).unwrap();
        match check_case_cpu(&case) {
            Ok(e) if e <= cpu_tolerance(&case.dtype) => {
                if case.dtype == "float32" {
                    worst_cpu = worst_cpu.max(e)
                }
            }
            Ok(e) => failures.push(format!("{} cpu: {e:e}", case.name)),
            Err(e) => failures.push(format!("{} cpu: {e}", case.name)),
        }
        for kernel in KERNELS.iter().filter(|_| ctx.is_some()) {
            let ctx = ctx.as_ref().expect("filtered");
            match check_case_gpu_with(&case, ctx, *kernel) {
                Ok(e) if e <= 1e-4 => worst_gpu = worst_gpu.max(e),
                Ok(e) => failures.push(format!("{} gpu {kernel:?}: {e:e}", case.name)),
                Err(e) => failures.push(format!("{} gpu {kernel:?}: {e}", case.name)),
            }
        }
    }
    println!("worst error: cpu {worst_cpu:e}, gpu {worst_gpu:e}");
    assert!(failures.is_empty(), "failing:\n{}", failures.join("\n"));
}

type Outputs = Vec<ArrayD<f32>>;

/// The CPU outputs of `config` on `x` (and `mask`), and the GPU's with each recurrent kernel.
fn compare(
    ctx: &std::sync::Arc<lstm_wgpu::gpu::GpuContext>,
    config: &LayerConfig,
    x: &Array3<f32>,
    mask: Option<&Array2<bool>>,
    seed: u64,
) -> (Outputs, Vec<(RecurrentKernel, Outputs)>) {
    let mut net = Network::<f32>::random(config, x.dim().2, seed).unwrap();
    let cpu = net.forward(x.view(), None, mask.map(|m| m.view())).unwrap();
    let mut g = GpuNetwork::new(ctx.clone(), &net).unwrap();
    let gpu = KERNELS
        .iter()
        .map(|&k| {
            g.set_recurrent_kernel(k);
            let out = g.forward(x.view(), None, mask.map(|m| m.view())).unwrap();
            (k, out)
        })
        .collect();
    (cpu, gpu)
}

#[test]
fn gpu_matches_cpu_over_shapes_masks_and_options() {
    let Some(ctx) = gpu("gpu_matches_cpu_over_shapes_masks_and_options") else {
        return;
    };
    let mut n = 0;
    for cell in CELLS {
        // (batch, steps, inputs, units): odd widths, several step workgroups in x and y
        for (k, &(b, t, i, h)) in [(1, 7, 3, 1), (3, 12, 5, 7), (6, 9, 16, 65), (9, 5, 8, 130)]
            .iter()
            .enumerate()
        {
            for go_backwards in [false, true] {
                for masked in [false, true] {
                    let mut c = config(cell, h)
                        .go_backwards(go_backwards)
                        .zero_output_for_mask(k % 2 == 0);
                    if k == 1 {
                        c = c
                            .activation(Activation::Relu)
                            .recurrent_activation(Activation::HardSigmoid);
                    }
                    if k == 3 {
                        c = c.use_bias(false);
                    }
                    let x = xorshift_input(b, t, i, n, 1.5);
                    let m = masked.then(|| mask(b, t));
                    let (cpu, gpus) = compare(&ctx, &LayerConfig::Lstm(c), &x, m.as_ref(), n);
                    for (kernel, gpu) in gpus {
                        let err = max_abs(&cpu, &gpu);
                        assert!(
                            err <= 1e-4,
                            "{cell:?} {kernel:?} B={b} T={t} I={i} H={h} \
                             backwards={go_backwards} masked={masked}: GPU vs CPU {err:e}"
                        );
                    }
                    n += 1;
                }
            }
        }
        // Bidirectional (sum, masks) and a stack ending in an LSTM
        let bidi =
            LayerConfig::Bidirectional(BidirectionalConfig::new(config(cell, 9), MergeMode::Sum));
        let stack = LayerConfig::Sequential(vec![
            LayerConfig::Lstm(config(cell, 12).return_state(false)),
            LayerConfig::Lstm(LstmConfig::new(5)),
        ]);
        for net in [bidi, stack] {
            let x = xorshift_input(3, 11, 4, n, 1.0);
            let m = mask(3, 11);
            let (cpu, gpus) = compare(&ctx, &net, &x, Some(&m), n);
            for (kernel, gpu) in gpus {
                assert!(max_abs(&cpu, &gpu) <= 1e-4, "{cell:?} {kernel:?} {net:?}");
            }
            n += 1;
        }
    }
}

#[test]
fn gpu_matches_cpu_over_thousands_of_steps() {
    let Some(ctx) = gpu("gpu_matches_cpu_over_thousands_of_steps") else {
        return;
    };
    for cell in CELLS {
        for (b, t, h, masked) in [(1, 3000, 64, false), (3, 1500, 33, true)] {
            let c = config(cell, h).return_state(false);
            let x = xorshift_input(b, t, 8, t as u64, 2.0);
            let m = masked.then(|| mask(b, t));
            let (cpu, gpus) = compare(&ctx, &LayerConfig::Lstm(c), &x, m.as_ref(), 7);
            for (kernel, gpu) in gpus {
                let steps = cpu[0].axis_iter(Axis(1)).zip(gpu[0].axis_iter(Axis(1)));
                for (s, (p, q)) in steps.enumerate() {
                    let err = p
                        .iter()
                        .zip(q.iter())
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        err <= 1e-4,
                        "{cell:?} {kernel:?} B={b} T={t} H={h}: first wrong step {s} ({err:e})"
                    );
                }
            }
        }
    }
}

#[test]
fn nan_and_inf_propagate_alike_on_both_paths() {
    let Some(ctx) = gpu("nan_and_inf_propagate_alike_on_both_paths") else {
        return;
    };
    for cell in CELLS {
        for act in [Activation::Tanh, Activation::Relu, Activation::Linear] {
            let c = config(cell, 6).activation(act);
            let mut x = xorshift_input(3, 8, 4, 3, 1.0);
            x[[0, 2, 1]] = f32::NAN;
            x[[1, 4, 0]] = f32::INFINITY;
            x[[2, 5, 3]] = f32::NEG_INFINITY;
            // a NaN at a masked step does not reach the state
            x[[2, 1, 0]] = f32::NAN;
            let mut m = Array2::from_elem((3, 8), true);
            m[[2, 1]] = false;
            let (cpu, gpus) = compare(&ctx, &LayerConfig::Lstm(c), &x, Some(&m), 5);
            for (a, b) in gpus.iter().flat_map(|(_, g)| cpu.iter().zip(g)) {
                for (p, q) in a.iter().zip(b.iter()) {
                    assert_eq!(
                        p.is_nan(),
                        q.is_nan(),
                        "{cell:?} {act:?}: NaN on one path only ({p} vs {q})"
                    );
                    if p.is_finite() || q.is_finite() {
                        assert!((p - q).abs() <= 1e-4, "{cell:?} {act:?}: {p} vs {q}");
                    } else if !p.is_nan() {
                        assert_eq!(p, q, "{cell:?} {act:?}");
                    }
                }
            }
            // the NaN at step 2 of row 0 reaches every later step of that row
            assert!(cpu[0][[0, 7, 0]].is_nan(), "{cell:?} {act:?}");
            assert!(!cpu[0][[2, 1, 0]].is_nan(), "{cell:?}: masked NaN leaked");
        }
    }
}

#[test]
fn stateful_steps_equal_one_forward_and_states_are_one_tensor() {
    let Some(ctx) = gpu("stateful_steps_equal_one_forward_and_states_are_one_tensor") else {
        return;
    };
    for cell in CELLS {
        let c = LstmConfig::new(5)
            .cell(cell)
            .stateful(true)
            .return_sequences(true);
        let mut net = Network::<f32>::random(&LayerConfig::Lstm(c), 3, 9).unwrap();
        let x = xorshift_input(2, 6, 3, 4, 1.0);
        let whole = net.forward(x.view(), None, None).unwrap();
        let mut g = GpuNetwork::new(ctx.clone(), &net).unwrap();
        for t in 0..6 {
            let y = g.step(x.index_axis(Axis(1), t)).unwrap();
            let want = whole[0].index_axis(Axis(1), t);
            let err = y
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err <= 1e-5, "{cell:?} step {t}: {err:e}");
        }
    }
    // One state tensor per direction: [h0] for a GRU, named in the error otherwise.
    let c = LstmConfig::gru(4).return_state(true);
    let mut net = Network::<f32>::random(&LayerConfig::Lstm(c.clone()), 2, 0).unwrap();
    let x = Array3::<f32>::ones((2, 3, 2));
    let h0 = Array2::<f32>::zeros((2, 4));
    let out = net.forward(x.view(), Some(&[h0.view()]), None).unwrap();
    assert_eq!(out.len(), 2, "a GRU returns [output, h]");
    let e = net
        .forward(x.view(), Some(&[h0.view(), h0.view()]), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("h0") && e.contains("got 2"), "{e}");
    if let Some(ctx) = gpu("gru initial state") {
        let mut g = GpuNetwork::new(ctx, &net).unwrap();
        let got = g.forward(x.view(), Some(&[h0.view()]), None).unwrap();
        assert!(max_abs(&got, &out) <= 1e-5);
        let e = g
            .forward(x.view(), Some(&[h0.view(), h0.view()]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("h0") && e.contains("got 2"), "{e}");
    }
}

#[test]
fn gru_weights_are_checked_against_the_form() {
    let c = LstmConfig::gru(4);
    // reset_after: bias [2, 3H] in Keras, [6H] here
    let w = LstmWeights::<f32>::random(&c, 3, 0).unwrap();
    assert_eq!(w.bias.as_ref().unwrap().len(), 24);
    assert_eq!(w.kernel.dim(), (3, 12));
    let mut wrong = w.clone();
    wrong.bias = Some(ndarray::Array1::zeros(12));
    let e = wrong.validate(&c, 3).unwrap_err().to_string();
    assert!(
        e.contains("gru/bias") && e.contains("24") && e.contains("12"),
        "{e}"
    );
    let list: Vec<ArrayD<f32>> = vec![
        w.kernel.clone().into_dyn(),
        w.recurrent_kernel.clone().into_dyn(),
        ndarray::Array1::<f32>::zeros(12).into_dyn(),
    ];
    let e = LstmWeights::from_keras_list(&c, &list)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gru/bias") && e.contains("[2, 12]"), "{e}");
    let before = c.clone().cell(Cell::Gru { reset_after: false });
    assert!(LstmWeights::from_keras_list(&before, &list).is_ok());
    let rnn = LstmConfig::simple_rnn(4);
    let e = LstmWeights::<f32>::from_keras_list(&rnn, &list)
        .unwrap_err()
        .to_string();
    assert!(e.contains("simple_rnn/bias") && e.contains("[4]"), "{e}");
}

#[test]
fn gpu_layer_returns_the_cpu_layers_output_and_state_for_every_cell() {
    let Some(ctx) = gpu("gpu_layer_returns_the_cpu_layers_output_and_state_for_every_cell") else {
        return;
    };
    for cell in CELLS {
        let c = config(cell, 6);
        let w = LstmWeights::<f32>::random(&c, 3, 1).unwrap();
        let mut cpu = lstm_wgpu::Lstm::new(c, w).unwrap();
        let mut g = lstm_wgpu::gpu::GpuLstm::new(ctx.clone(), &cpu).unwrap();
        let x = xorshift_input(2, 5, 3, 8, 1.0);
        let h0 = Array2::<f32>::from_elem((2, 6), 0.25);
        let want = cpu
            .forward_states(x.view(), Some(&[h0.view()]), None)
            .unwrap();
        let got = g
            .forward_states(x.view(), Some(&[h0.view()]), None)
            .unwrap();
        let (ws, gs) = (want.state.unwrap(), got.state.unwrap());
        assert_eq!(gs.c.dim(), (2, 0), "{cell:?}: one state tensor");
        let err = max_abs(
            &[got.output, gs.h.into_dyn()],
            &[want.output, ws.h.into_dyn()],
        );
        assert!(err <= 1e-5, "{cell:?}: {err:e}");
    }
}
