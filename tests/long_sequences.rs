//! Long sequences and non-finite inputs on both GPU recurrent kernels, against the CPU path.
//!
//! The whole-sequence kernel used to run a whole time loop in one invocation; Mesa's
//! llvmpipe (where CI runs) stops an invocation's loops after 65,535 iterations in all,
//! without an error, so every step past a few hundred was wrong. These tests run thousands of
//! steps on both kernels, with and without masks and go_backwards, and NaN/inf inputs per
//! activation.

use lstm_wgpu::gpu::{GpuNetwork, RecurrentKernel};
use lstm_wgpu::{Activation, LayerConfig, LstmConfig, Network};
use ndarray::{Array2, Array3, ArrayD, Axis, Dimension};

mod common;
use common::gpu;

const KERNELS: [RecurrentKernel; 2] = [RecurrentKernel::PerStep, RecurrentKernel::WholeSequence];

fn input(b: usize, t: usize, i: usize, seed: u64) -> Array3<f32> {
    common::xorshift_input(b, t, i, seed, 2.0)
}

/// Mask patterns: row 0 has left and right padding, row 1 random gaps (a third masked).
fn mask(b: usize, t: usize) -> Array2<bool> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    Array2::from_shape_fn((b, t), |(r, k)| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        if r == 0 {
            k >= t / 10 && k < t - t / 7
        } else {
            !s.is_multiple_of(3)
        }
    })
}

/// The first timestep (axis 1) where `a` and `b` differ by more than `tol`, with the error.
fn first_wrong_step(a: &ArrayD<f32>, b: &ArrayD<f32>, tol: f32) -> Option<(usize, f32)> {
    if a.ndim() < 3 {
        return None;
    }
    for (t, (x, y)) in a.axis_iter(Axis(1)).zip(b.axis_iter(Axis(1))).enumerate() {
        let err = x
            .iter()
            .zip(y.iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        if err > tol {
            return Some((t, err));
        }
    }
    None
}

#[test]
fn both_kernels_match_cpu_over_thousands_of_steps() {
    let Some(ctx) = gpu("both_kernels_match_cpu_over_thousands_of_steps") else {
        return;
    };
    if let Some(n) = ctx.loop_limit().unwrap() {
        println!("{}: loops stop after {n} iterations", ctx.describe());
    }
    let input_dim = 8;
    let mut worst = 0.0f32;
    let mut case = 0u64;
    for steps in [1000, 5000] {
        for units in [64, 128, 256] {
            for batch in [1, 2] {
                // Four option sets at T = 1000, two at T = 5000 (the suite's time).
                let options: &[(bool, bool)] = if steps == 1000 {
                    &[(false, false), (true, false), (false, true), (true, true)]
                } else {
                    &[(false, false), (true, true)]
                };
                for &(masked, backwards) in options {
                    case += 1;
                    let config = LayerConfig::Lstm(
                        LstmConfig::new(units)
                            .return_sequences(true)
                            .return_state(true)
                            .go_backwards(backwards)
                            .zero_output_for_mask(case.is_multiple_of(2)),
                    );
                    let cpu = Network::<f32>::random(&config, input_dim, case).unwrap();
                    let x = input(batch, steps, input_dim, case);
                    let m = mask(batch, steps);
                    let m = masked.then(|| m.view());
                    let want = cpu.clone().forward(x.view(), None, m).unwrap();
                    for kernel in KERNELS {
                        let mut net = GpuNetwork::new(ctx.clone(), &cpu).unwrap();
                        net.set_recurrent_kernel(kernel);
                        let got = net.forward(x.view(), None, m).unwrap();
                        let what = format!(
                            "{kernel:?} T={steps} H={units} B={batch} mask={masked} \
                             go_backwards={backwards}"
                        );
                        assert_eq!(got.len(), want.len(), "{what}");
                        for (g, w) in got.iter().zip(&want) {
                            assert_eq!(g.shape(), w.shape(), "{what}");
                            if let Some((t, err)) = first_wrong_step(g, w, 1e-4) {
                                panic!("{what}: first wrong step {t} (error {err:e})");
                            }
                            let err =
                                common::max_abs(std::slice::from_ref(g), std::slice::from_ref(w));
                            assert!(g.iter().all(|v| v.is_finite()), "{what}: non-finite");
                            assert!(err <= 1e-4, "{what}: error {err:e}");
                            worst = worst.max(err);
                        }
                    }
                }
            }
        }
    }
    println!("long sequences, both kernels: worst GPU vs CPU error {worst:e}");
}

/// NaN and ±inf inputs: every output is NaN exactly where the CPU's is, and the finite ones
/// agree within `tol` (relative past 1).
fn check_non_finite(what: &str, got: &[ArrayD<f32>], want: &[ArrayD<f32>], tol: f32) -> usize {
    let mut nans = 0;
    assert_eq!(got.len(), want.len(), "{what}");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.shape(), w.shape(), "{what}");
        for ((idx, p), q) in g.indexed_iter().zip(w.iter()) {
            let (idx, p) = (idx.slice().to_vec(), *p);
            assert_eq!(
                p.is_nan(),
                q.is_nan(),
                "{what}: output {k} at {idx:?}: GPU {p}, CPU {q}"
            );
            nans += usize::from(q.is_nan());
            if !q.is_nan() {
                let close = p == *q || (p - q).abs() <= tol * q.abs().max(1.0);
                assert!(close, "{what}: output {k} at {idx:?}: GPU {p}, CPU {q}");
            }
        }
    }
    nans
}

#[test]
fn nan_and_inf_propagate_as_on_cpu_for_every_activation() {
    let Some(ctx) = gpu("nan_and_inf_propagate_as_on_cpu_for_every_activation") else {
        return;
    };
    let (batch, steps, input_dim) = (5, 6, 3);
    let mut x = input(batch, steps, input_dim, 7).mapv(|v| v * 0.5);
    // Row 0: x = [.1, NaN, .2, ...] in one feature; row 1: NaN at a step the mask hides;
    // row 2: +inf; row 3: -inf; row 4: finite.
    x[[0, 1, 0]] = f32::NAN;
    x[[1, 2, 1]] = f32::NAN;
    x[[2, 3, 2]] = f32::INFINITY;
    x[[3, 1, 0]] = f32::NEG_INFINITY;
    let mut m = Array2::from_elem((batch, steps), true);
    m[[1, 2]] = false;
    let mut configs = Vec::new();
    for a in Activation::ALL {
        configs.push(LstmConfig::new(6).activation(a));
        configs.push(LstmConfig::new(6).recurrent_activation(a));
    }
    let mut total_nans = 0;
    for (n, c) in configs.into_iter().enumerate() {
        let c = c.return_sequences(true).return_state(true);
        let config = LayerConfig::Lstm(c.clone());
        let cpu = Network::<f32>::random(&config, input_dim, n as u64).unwrap();
        for masked in [false, true] {
            let mask = masked.then(|| m.view());
            let want = cpu.clone().forward(x.view(), None, mask).unwrap();
            // The CPU reference itself: NaN from the NaN step on in row 0, none in row 4,
            // and none in row 1 when its NaN step is masked.
            let seq = &want[0];
            assert!(seq[[0, 0, 0]].is_finite(), "{c:?}");
            assert!(seq[[0, 1, 0]].is_nan() && seq[[0, steps - 1, 0]].is_nan());
            // With unbounded activations finite inputs can overflow within six steps, and
            // exp(exp(..)) amplifies f32 rounding (values of 1e21 differ by 1e-4 relative).
            let bounded = |a: Activation| {
                use Activation::*;
                matches!(
                    a,
                    Tanh | Sigmoid | HardSigmoid | HardSigmoidKeras2 | Softsign
                )
            };
            let both_bounded = bounded(c.activation) && bounded(c.recurrent_activation);
            let tol = if both_bounded { 1e-4 } else { 1e-3 };
            if both_bounded {
                assert!(seq.index_axis(Axis(0), 4).iter().all(|v| !v.is_nan()));
                if masked {
                    assert!(seq.index_axis(Axis(0), 1).iter().all(|v| !v.is_nan()));
                }
            }
            for kernel in KERNELS {
                let mut net = GpuNetwork::new(ctx.clone(), &cpu).unwrap();
                net.set_recurrent_kernel(kernel);
                let got = net.forward(x.view(), None, mask).unwrap();
                let what = format!(
                    "{kernel:?} activation {} recurrent {} mask={masked}",
                    c.activation, c.recurrent_activation
                );
                total_nans += check_non_finite(&what, &got, &want, tol);
            }
        }
    }
    assert!(total_nans > 0);
    println!("NaN/inf: {total_nans} NaN outputs, all where the CPU has them");
}
