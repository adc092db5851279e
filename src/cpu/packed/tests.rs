//! The packed kernels against the generic path.

use super::*;
use crate::{Activation, LstmConfig};

/// A GRU without reset_after is not packed (it runs the generic path).
#[test]
fn a_reset_before_gru_is_not_packed() {
    let c = LstmConfig::gru(5).cell(Cell::Gru { reset_after: false });
    let w = LstmWeights::<f32>::random(&c, 3, 0).unwrap();
    for isa in isas() {
        assert!(PackedWeights::with_isa(&w, c.cell, isa).is_none());
    }
}
use ndarray::Array;
use rand::{rngs::StdRng, RngExt, SeedableRng};

/// The instruction sets this CPU can run.
fn isas() -> Vec<Isa> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push(Isa::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            v.push(Isa::Avx2);
        }
    }
    v
}

/// The packed kernels against the generic path on random layers: odd sizes (padding, row
/// remainders), masks, go_backwards, initial states, both threading modes.
#[test]
fn packed_matches_generic_path() {
    const GATES: [Activation; 4] = [
        Activation::Sigmoid,
        Activation::HardSigmoid,
        Activation::HardSigmoidKeras2,
        Activation::Tanh,
    ];
    const OUTPUTS: [Activation; 5] = [
        Activation::Tanh,
        Activation::Relu,
        Activation::Softsign,
        Activation::Linear,
        Activation::Gelu,
    ];
    let isas = isas();
    if isas.is_empty() {
        eprintln!("no AVX2/AVX-512 on this CPU: the packed kernels never run here");
        return;
    }
    let mut rng = StdRng::seed_from_u64(11);
    let mut worst = 0.0f32;
    for case in 0..90 {
        // every 10th case is big enough to split each step across threads
        let (batch, units) = if case % 10 == 9 {
            (rng.random_range(8..=13), rng.random_range(120..=160))
        } else {
            (rng.random_range(1..=14), rng.random_range(1..=40))
        };
        let steps = rng.random_range(1..=7);
        let input = rng.random_range(1..=37);
        // every cell the packed kernels run
        let cell =
            [Cell::Lstm, Cell::Gru { reset_after: true }, Cell::SimpleRnn][case as usize % 3];
        let mut config = LstmConfig::new(units).cell(cell);
        config.activation = OUTPUTS[rng.random_range(0..OUTPUTS.len())];
        config.recurrent_activation = GATES[rng.random_range(0..GATES.len())];
        config.use_bias = rng.random_bool(0.7);
        config.go_backwards = rng.random_bool(0.3);
        config.zero_output_for_mask = rng.random_bool(0.5);
        let weights = LstmWeights::<f32>::random(&config, input, case).unwrap();
        let x = Array::from_shape_fn((batch, steps, input), |_| rng.random_range(-2.0..2.0));
        let mask = rng
            .random_bool(0.4)
            .then(|| Array::from_shape_fn((batch, steps), |_| rng.random_bool(0.7)));
        let c_units = if cell == Cell::Lstm { units } else { 0 };
        let start = LstmState {
            h: Array::from_shape_fn((batch, units), |_| rng.random_range(-1.0..1.0)),
            c: Array::from_shape_fn((batch, c_units), |_| rng.random_range(-1.0..1.0)),
        };
        let expected = super::super::reference::run(
            &config,
            &weights,
            x.view(),
            start.clone(),
            mask.as_ref().map(|m| m.view()),
        );
        for &isa in &isas {
            let packed = PackedWeights::with_isa(&weights, cell, isa).unwrap();
            let mut scratch = vec![f32::NAN; 3];
            let got = run(
                &packed,
                StepRule::of(&config),
                config.go_backwards,
                x.view(),
                &start,
                mask.as_ref().map(|m| m.view()),
                &mut scratch,
            )
            .unwrap();
            let pairs = [
                (got.0.view().into_dyn(), expected.0.view().into_dyn()),
                (got.1.view().into_dyn(), expected.1.view().into_dyn()),
                (got.2.h.view().into_dyn(), expected.2.h.view().into_dyn()),
                (got.2.c.view().into_dyn(), expected.2.c.view().into_dyn()),
            ];
            for (g, e) in pairs {
                assert_eq!(g.shape(), e.shape());
                for (a, b) in g.iter().zip(e.iter()) {
                    let err = (a - b).abs() / b.abs().max(1.0);
                    worst = worst.max(err);
                    assert!(
                        err <= 1e-5,
                        "case {case} {cell:?} {isa:?} B={batch} T={steps} I={input} \
                         H={units}: {a} vs {b}"
                    );
                }
            }
        }
    }
    eprintln!("packed vs generic f32 path: worst relative error {worst:.2e}");
}

/// Forwards that split their steps between threads, run concurrently from inside the
/// rayon pool and from plain threads, give exactly the result of a forward run alone
/// (no deadlock when the helper threads are busy with other forwards).
#[test]
fn concurrent_forwards_match_a_lone_forward() {
    let Some(&isa) = isas().first() else {
        return;
    };
    let config = LstmConfig::new(130);
    let weights = LstmWeights::<f32>::random(&config, 9, 3).unwrap();
    let packed = PackedWeights::with_isa(&weights, Cell::Lstm, isa).unwrap();
    let (batch, steps) = (7, 12);
    assert!(batch * 130 * packed.panels * COLS >= STEP_PARALLEL_MIN_MACS);
    let x = Array::from_shape_fn((batch, steps, 9), |(b, t, i)| {
        ((b * 31 + t * 7 + i) % 17) as f32 / 8.0 - 1.0
    });
    let start = LstmState {
        h: Array2::zeros((batch, 130)),
        c: Array2::zeros((batch, 130)),
    };
    let forward = || {
        let mut scratch = Vec::new();
        let rule = StepRule::of(&config);
        run(&packed, rule, false, x.view(), &start, None, &mut scratch).unwrap()
    };
    let alone = forward();
    let in_pool: Vec<_> = (0..8).into_par_iter().map(|_| forward()).collect();
    let threads: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(forward)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for got in in_pool.iter().chain(&threads) {
        assert_eq!(got, &alone);
    }
}

/// Infinite and NaN inputs give what the generic path gives, for every packed cell: no slot
/// of a panel is an input times a padding zero (NaN for an infinite input).
#[test]
fn non_finite_inputs_match_the_generic_path() {
    for isa in isas() {
        for cell in [Cell::Lstm, Cell::Gru { reset_after: true }, Cell::SimpleRnn] {
            for batch in [2, 7] {
                let config = LstmConfig::new(20).cell(cell);
                let weights = LstmWeights::<f32>::random(&config, 5, 4).unwrap();
                let mut x = Array::from_shape_fn((batch, 6, 5), |(b, t, i)| {
                    ((b * 7 + t * 3 + i) % 11) as f32 / 5.0 - 1.0
                });
                x[[0, 1, 2]] = f32::INFINITY;
                x[[1, 3, 0]] = f32::NEG_INFINITY;
                x[[batch - 1, 4, 4]] = f32::NAN;
                let c_units = if cell == Cell::Lstm { 20 } else { 0 };
                let start = LstmState {
                    h: Array2::zeros((batch, 20)),
                    c: Array2::zeros((batch, c_units)),
                };
                let want =
                    super::super::reference::run(&config, &weights, x.view(), start.clone(), None);
                let packed = PackedWeights::with_isa(&weights, cell, isa).unwrap();
                let rule = StepRule::of(&config);
                let got = run(
                    &packed,
                    rule,
                    false,
                    x.view(),
                    &start,
                    None,
                    &mut Vec::new(),
                )
                .unwrap();
                for (a, b) in got.0.iter().zip(want.0.iter()) {
                    let same = (a.is_nan() && b.is_nan())
                        || a == b
                        || (a - b).abs() <= 1e-5 * b.abs().max(1.0);
                    assert!(same, "{cell:?} {isa:?} B={batch}: {a} vs {b}");
                }
            }
        }
    }
}
