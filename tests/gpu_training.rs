//! GPU training (`GpuRecurrentTrainer`) against its CPU twin (`train::lstm_gradients`, itself
//! checked against TensorFlow's gradients in tests/training.rs): every output and gradient
//! within 1e-4, for every cell the GPU trains, every mask pattern, go_backwards,
//! return_sequences both ways, zero_output_for_mask, initial states and their cotangents,
//! the activations; a long sequence whose products over all steps run past a software
//! rasterizer's loop limit (split reductions); many shapes in one process; bad input.

mod common;

use lstm_wgpu::gpu::GpuRecurrentTrainer;
use lstm_wgpu::train::{lstm_gradients, LstmCall, LstmCotangents, LstmGrads};
use lstm_wgpu::{Activation, Cell, Lstm, LstmConfig, LstmError, LstmWeights};
use ndarray::{Array1, Array2, ArrayD};

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    common::xorshift_input(1, 1, n, seed, scale)
        .into_raw_vec_and_offset()
        .0
}

fn array2(r: usize, c: usize, seed: u64, scale: f32) -> Array2<f32> {
    Array2::from_shape_vec((r, c), values(r * c, seed, scale)).unwrap()
}

/// The mask patterns: none, all present, left and right padding, holes, all masked rows.
fn masks(b: usize, t: usize) -> Vec<(&'static str, Option<Array2<bool>>)> {
    let mut out = vec![("no mask", None)];
    out.push(("all present", Some(Array2::from_elem((b, t), true))));
    out.push((
        "right padding",
        Some(Array2::from_shape_fn((b, t), |(r, s)| s < t - (r % t))),
    ));
    out.push((
        "left padding",
        Some(Array2::from_shape_fn((b, t), |(r, s)| s >= r % t)),
    ));
    out.push((
        "holes, a fully masked row",
        Some(Array2::from_shape_fn((b, t), |(r, s)| {
            r != 1 && (s * 7 + r * 3) % 5 != 0
        })),
    ));
    out
}

struct Case {
    cfg: LstmConfig,
    b: usize,
    t: usize,
    i: usize,
    init: bool,
    state_cot: bool,
}

fn run(ctx: &std::sync::Arc<lstm_wgpu::gpu::GpuContext>, case: &Case, seed: u64) -> f32 {
    let Case {
        cfg,
        b,
        t,
        i,
        init,
        state_cot,
    } = case;
    let (b, t, i, h) = (*b, *t, *i, cfg.units);
    let mut w = LstmWeights::random(cfg, i, seed).unwrap();
    if let Some(bias) = w.bias.as_mut() {
        *bias = Array1::from_vec(values(bias.len(), seed + 1, 0.5));
    }
    let layer = Lstm::new(cfg.clone(), w).unwrap();
    let trainer = GpuRecurrentTrainer::new(ctx.clone(), &layer).unwrap();
    let x = common::xorshift_input(b, t, i, seed + 2, 1.5);
    let out_shape = if cfg.return_sequences {
        vec![b, t, h]
    } else {
        vec![b, h]
    };
    let n: usize = out_shape.iter().product();
    let cot = LstmCotangents {
        output: ArrayD::from_shape_vec(out_shape, values(n, seed + 3, 1.0)).unwrap(),
        h: state_cot.then(|| array2(b, h, seed + 4, 1.0)),
        c: state_cot.then(|| array2(b, h, seed + 5, 1.0)),
    };
    let (h0, c0) = (array2(b, h, seed + 6, 0.8), array2(b, h, seed + 7, 0.8));
    let init = init.then(|| (h0.view(), c0.view()));
    let mut worst = 0.0f32;
    for (what, mask) in masks(b, t) {
        let m = mask.as_ref().map(|m| m.view());
        let want = lstm_gradients(&layer, x.view(), m, init, &cot).unwrap();
        let got = trainer.gradients(x.view(), m, init, &cot).unwrap();
        let d = difference(&want, &got);
        assert!(
            d <= 1e-4,
            "{:?} {}x{}x{} h{} seq {} back {} zero {} init {} state cot {}, {what}: {d}",
            cfg.cell,
            b,
            t,
            i,
            h,
            cfg.return_sequences,
            cfg.go_backwards,
            cfg.zero_output_for_mask,
            case.init,
            case.state_cot
        );
        worst = worst.max(d);
    }
    worst
}

/// The largest difference over every output and gradient (shapes must agree).
fn difference(
    (wc, wg): &(LstmCall<f32>, LstmGrads<f32>),
    (gc, gg): &(LstmCall<f32>, LstmGrads<f32>),
) -> f32 {
    let d = |a: ArrayD<f32>, b: ArrayD<f32>, what: &str| {
        assert_eq!(a.shape(), b.shape(), "{what}");
        a.iter()
            .zip(b.iter())
            .map(|(p, q)| {
                assert_eq!(p.is_nan(), q.is_nan(), "{what}: {p} vs {q}");
                if p.is_nan() {
                    0.0
                } else {
                    (p - q).abs()
                }
            })
            .fold(0.0f32, f32::max)
    };
    let mut worst = d(wc.output.clone(), gc.output.clone(), "output");
    for (a, b, what) in [
        (&wc.h, &gc.h, "h"),
        (&wc.c, &gc.c, "c"),
        (&wg.kernel, &gg.kernel, "kernel"),
        (
            &wg.recurrent_kernel,
            &gg.recurrent_kernel,
            "recurrent kernel",
        ),
        (&wg.h0, &gg.h0, "h0"),
        (&wg.c0, &gg.c0, "c0"),
    ] {
        worst = worst.max(d(a.clone().into_dyn(), b.clone().into_dyn(), what));
    }
    worst = worst.max(d(wg.x.clone().into_dyn(), gg.x.clone().into_dyn(), "x"));
    assert_eq!(wg.bias.is_some(), gg.bias.is_some());
    if let (Some(a), Some(b)) = (&wg.bias, &gg.bias) {
        worst = worst.max(d(a.clone().into_dyn(), b.clone().into_dyn(), "bias"));
    }
    worst
}

fn cells() -> [LstmConfig; 3] {
    [
        LstmConfig::new(5),
        LstmConfig::gru(5),
        LstmConfig::simple_rnn(5),
    ]
}

#[test]
fn gradients_match_the_cpu_for_every_cell_option_and_mask() {
    let Some(ctx) = common::gpu("gradients_match_the_cpu_for_every_cell_option_and_mask") else {
        return;
    };
    let mut worst = 0.0f32;
    let mut seed = 10;
    for base in cells() {
        for (seqs, back, zero) in [
            (true, false, false),
            (false, false, false),
            (true, true, false),
            (false, true, false),
            (true, false, true),
            (true, true, true),
        ] {
            seed += 10;
            let cfg = base
                .clone()
                .return_sequences(seqs)
                .go_backwards(back)
                .zero_output_for_mask(zero);
            let case = Case {
                cfg,
                b: 4,
                t: 7,
                i: 3,
                init: seed % 20 == 0,
                state_cot: seed % 30 == 0,
            };
            worst = worst.max(run(&ctx, &case, seed));
        }
    }
    eprintln!("worst GPU vs CPU difference: {worst:e}");
}

#[test]
fn initial_states_activations_and_shapes() {
    let Some(ctx) = common::gpu("initial_states_activations_and_shapes") else {
        return;
    };
    let mut seed = 500;
    // initial states with cotangents of the final states, every cell
    for base in cells() {
        seed += 10;
        let case = Case {
            cfg: base.return_sequences(true),
            b: 3,
            t: 6,
            i: 4,
            init: true,
            state_cot: true,
        };
        run(&ctx, &case, seed);
    }
    // the activations a user may choose (the recurrent one too), and no bias
    for (act, rec) in [
        (Activation::Relu, Activation::HardSigmoid),
        (Activation::Elu, Activation::HardSigmoidKeras2),
        (Activation::Softsign, Activation::Sigmoid),
        (Activation::Swish, Activation::Tanh),
        (Activation::Gelu, Activation::Sigmoid),
        (Activation::Selu, Activation::Linear),
        (Activation::Softplus, Activation::Sigmoid),
        (Activation::Relu6, Activation::Sigmoid),
    ] {
        for base in cells() {
            seed += 10;
            let cfg = base
                .activation(act)
                .recurrent_activation(rec)
                .use_bias(seed % 20 != 0)
                .return_sequences(true);
            let case = Case {
                cfg,
                b: 2,
                t: 5,
                i: 3,
                init: false,
                state_cot: false,
            };
            run(&ctx, &case, seed);
        }
    }
    // many distinct shapes in one process: units around the workgroup size, one row, one step
    for (b, t, i, h) in [
        (1, 1, 1, 1),
        (1, 9, 2, 63),
        (5, 3, 7, 64),
        (2, 4, 5, 65),
        (9, 2, 1, 130),
    ] {
        for base in [LstmConfig::new(h), LstmConfig::gru(h)] {
            seed += 10;
            let case = Case {
                cfg: base.return_sequences(seed % 20 == 0),
                b,
                t,
                i,
                init: true,
                state_cot: true,
            };
            run(&ctx, &case, seed);
        }
    }
}

/// 2,100 steps of 16 rows: the products over all steps reduce 33,600 values, past half of
/// lavapipe's 65,535-iteration loop limit, so they run as several accumulating dispatches.
#[test]
fn long_sequences_match_the_cpu() {
    let Some(ctx) = common::gpu("long_sequences_match_the_cpu") else {
        return;
    };
    for (k, base) in cells().into_iter().enumerate() {
        let case = Case {
            cfg: base.return_sequences(k != 1),
            b: 16,
            t: 2100,
            i: 2,
            init: false,
            state_cot: false,
        };
        let cfg = &case.cfg;
        let mut w = LstmWeights::random(cfg, case.i, 90 + k as u64).unwrap();
        w.recurrent_kernel.mapv_inplace(|v| 0.5 * v);
        let layer = Lstm::new(cfg.clone(), w).unwrap();
        let trainer = GpuRecurrentTrainer::new(ctx.clone(), &layer).unwrap();
        let x = common::xorshift_input(case.b, case.t, case.i, 91, 1.0);
        let shape = if cfg.return_sequences {
            vec![case.b, case.t, 5]
        } else {
            vec![case.b, 5]
        };
        let n = shape.iter().product();
        let cot = LstmCotangents {
            output: ArrayD::from_shape_vec(shape, values(n, 92, 0.1)).unwrap(),
            h: None,
            c: None,
        };
        let mask = Array2::from_shape_fn((case.b, case.t), |(r, s)| s < case.t - 37 * r);
        let want = lstm_gradients(&layer, x.view(), Some(mask.view()), None, &cot).unwrap();
        let got = trainer
            .gradients(x.view(), Some(mask.view()), None, &cot)
            .unwrap();
        // the weight gradients sum 33,600 terms: compare them relative to their size
        let d = difference(&want, &got);
        let scale = want
            .1
            .kernel
            .iter()
            .chain(want.1.recurrent_kernel.iter())
            .fold(1.0f32, |m, v| m.max(v.abs()));
        assert!(
            d <= 1e-4 * scale,
            "{:?}: {d} (gradients up to {scale})",
            cfg.cell
        );
    }
}

#[test]
fn non_finite_inputs_propagate_as_on_the_cpu() {
    let Some(ctx) = common::gpu("non_finite_inputs_propagate_as_on_the_cpu") else {
        return;
    };
    for base in cells() {
        let cfg = base.return_sequences(true);
        let layer = Lstm::new(cfg.clone(), LstmWeights::random(&cfg, 3, 7).unwrap()).unwrap();
        let trainer = GpuRecurrentTrainer::new(ctx.clone(), &layer).unwrap();
        let mut x = common::xorshift_input(3, 4, 3, 8, 1.0);
        x[[0, 2, 1]] = f32::NAN;
        x[[2, 1, 0]] = f32::INFINITY;
        let cot = LstmCotangents {
            output: ArrayD::from_elem(vec![3, 4, 5], 0.5),
            h: None,
            c: None,
        };
        let want = lstm_gradients(&layer, x.view(), None, None, &cot).unwrap();
        let got = trainer.gradients(x.view(), None, None, &cot).unwrap();
        // NaN exactly where the CPU has it (checked inside), the rest within 1e-4
        let d = difference(&want, &got);
        assert!(d <= 1e-4, "{:?}: {d}", cfg.cell);
    }
}

#[test]
fn bad_input_is_an_error() {
    let Some(ctx) = common::gpu("bad_input_is_an_error") else {
        return;
    };
    let cfg = LstmConfig::new(4);
    let layer = Lstm::new(cfg.clone(), LstmWeights::random(&cfg, 3, 1).unwrap()).unwrap();
    let mut trainer = GpuRecurrentTrainer::new(ctx.clone(), &layer).unwrap();
    let x = common::xorshift_input(2, 5, 3, 1, 1.0);
    let cot = |shape: Vec<usize>| LstmCotangents {
        output: ArrayD::zeros(shape),
        h: None,
        c: None,
    };
    let shape_err = |e: LstmError, what: &str| {
        assert!(matches!(e, LstmError::ShapeMismatch { .. }), "{what}: {e}");
        assert!(e.to_string().contains(what), "{what}: {e}");
    };
    let x4 = common::xorshift_input(2, 5, 4, 1, 1.0);
    shape_err(
        trainer
            .gradients(x4.view(), None, None, &cot(vec![2, 4]))
            .unwrap_err(),
        "input of layer",
    );
    shape_err(
        trainer
            .gradients(x.view(), None, None, &cot(vec![2, 5, 4]))
            .unwrap_err(),
        "output cotangent",
    );
    let m = Array2::from_elem((2, 4), true);
    shape_err(
        trainer
            .gradients(x.view(), Some(m.view()), None, &cot(vec![2, 4]))
            .unwrap_err(),
        "mask of layer",
    );
    let s = Array2::zeros((3, 4));
    shape_err(
        trainer
            .gradients(x.view(), None, Some((s.view(), s.view())), &cot(vec![2, 4]))
            .unwrap_err(),
        "initial state h0",
    );
    let empty = common::xorshift_input(2, 0, 3, 1, 1.0);
    let e = trainer
        .gradients(empty.view(), None, None, &cot(vec![2, 4]))
        .unwrap_err();
    assert!(e.to_string().contains("at least one"), "{e}");
    let other = LstmWeights::random(&LstmConfig::new(4), 2, 1).unwrap();
    shape_err(trainer.set_weights(&other).unwrap_err(), "weights of layer");
    let v1 = LstmConfig::gru(4).cell(Cell::Gru { reset_after: false });
    let layer = Lstm::new(v1.clone(), LstmWeights::random(&v1, 3, 1).unwrap()).unwrap();
    let e = GpuRecurrentTrainer::new(ctx.clone(), &layer).unwrap_err();
    assert!(
        matches!(e, LstmError::UnsupportedOnPath { .. }) && e.to_string().contains("reset_after"),
        "{e}"
    );
}

/// set_weights replaces the weights: the gradients are then those of a trainer built on the
/// new weights.
#[test]
fn set_weights_replaces_the_uploaded_weights() {
    let Some(ctx) = common::gpu("set_weights_replaces_the_uploaded_weights") else {
        return;
    };
    for base in cells() {
        let cfg = base.return_sequences(true);
        let a = Lstm::new(cfg.clone(), LstmWeights::random(&cfg, 3, 1).unwrap()).unwrap();
        let mut wb = LstmWeights::random(&cfg, 3, 2).unwrap();
        if let Some(bias) = wb.bias.as_mut() {
            *bias = Array1::from_vec(values(bias.len(), 3, 0.5));
        }
        let b = Lstm::new(cfg.clone(), wb.clone()).unwrap();
        let mut trainer = GpuRecurrentTrainer::new(ctx.clone(), &a).unwrap();
        trainer.set_weights(&wb).unwrap();
        let x = common::xorshift_input(2, 4, 3, 4, 1.0);
        let cot = LstmCotangents {
            output: ArrayD::from_elem(vec![2, 4, 5], 1.0),
            h: None,
            c: None,
        };
        let want = lstm_gradients(&b, x.view(), None, None, &cot).unwrap();
        let got = trainer.gradients(x.view(), None, None, &cot).unwrap();
        assert!(difference(&want, &got) <= 1e-4, "{:?}", cfg.cell);
    }
}

/// forward then backward (two submissions, the tape kept on the device) gives what
/// gradients gives in one; a tape of another trainer is refused.
#[test]
fn forward_then_backward_equals_gradients() {
    let Some(ctx) = common::gpu("forward_then_backward_equals_gradients") else {
        return;
    };
    for base in cells() {
        let cfg = base.return_sequences(true).go_backwards(true);
        let layer = Lstm::new(cfg.clone(), LstmWeights::random(&cfg, 3, 5).unwrap()).unwrap();
        let trainer = GpuRecurrentTrainer::new(ctx.clone(), &layer).unwrap();
        let x = common::xorshift_input(3, 6, 3, 6, 1.0);
        let mask = Array2::from_shape_fn((3, 6), |(r, s)| s + r < 6);
        let cot = LstmCotangents {
            output: ArrayD::from_shape_vec(vec![3, 6, 5], values(90, 7, 1.0)).unwrap(),
            h: Some(array2(3, 5, 8, 1.0)),
            c: Some(array2(3, 5, 9, 1.0)),
        };
        let (call, tape) = trainer.forward(x.view(), Some(mask.view()), None).unwrap();
        let grads = trainer.backward(&tape, &cot).unwrap();
        let one = trainer
            .gradients(x.view(), Some(mask.view()), None, &cot)
            .unwrap();
        assert_eq!(difference(&one, &(call, grads)), 0.0, "{:?}", cfg.cell);
        let other = GpuRecurrentTrainer::new(ctx.clone(), &layer).unwrap();
        let e = other.backward(&tape, &cot).unwrap_err();
        assert!(e.to_string().contains("another trainer"), "{e}");
        let bad = LstmCotangents {
            output: ArrayD::zeros(vec![3, 5, 5]),
            h: None,
            c: None,
        };
        let e = trainer.backward(&tape, &bad).unwrap_err();
        assert!(e.to_string().contains("output cotangent"), "{e}");
    }
}
