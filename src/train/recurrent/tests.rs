use super::{backward, backward_recomputed, forward, forward_recomputed, LstmCotangents};
use crate::config::LstmConfig;
use crate::train::dropout::GateMasks;
use crate::weights::LstmWeights;
use ndarray::{Array1, Array2, Array3, ArrayD};

fn worst(a: &ndarray::ArrayViewD<'_, f64>, b: &ndarray::ArrayViewD<'_, f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Recompute mode against the whole tape: the same outputs and gradients for every cell,
/// mask pattern (rows masked at segment starts and ends, a fully masked row),
/// go_backwards, zero_output_for_mask, returned sequences or not, recurrent dropout, and
/// segment lengths that divide the sequence, do not, are 1 or longer than it.
#[test]
fn recompute_mode_matches_the_whole_tape() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let (b, t, i, h) = (4, 11, 3, 5);
    let mut worst_seen = 0.0f64;
    for round in 0..12 {
        let class = ["LSTM", "GRU", "SimpleRNN"][round % 3];
        let cfg = LstmConfig::from_keras_class(
            class,
            &serde_json::json!({
                "units": h, "return_sequences": round % 2 == 0,
                "go_backwards": round % 4 == 1, "zero_output_for_mask": round % 5 == 2,
                "reset_after": round % 6 != 4,
            }),
        )
        .unwrap();
        let g = cfg.cell.gates();
        let nb = if class == "GRU" && round % 6 != 4 {
            2 * g * h
        } else {
            g * h
        };
        let w = LstmWeights::new(
            &cfg,
            i,
            Array2::from_shape_fn((i, g * h), |_| next()),
            Array2::from_shape_fn((h, g * h), |_| next()),
            Some(Array1::from_shape_fn(nb, |_| next())),
        )
        .unwrap();
        let x = Array3::from_shape_fn((b, t, i), |_| next());
        let mut mask = Array2::from_elem((b, t), true);
        if round % 3 != 0 {
            for s in [0, 3, 4, 7, 10] {
                mask[[0, s]] = false;
            }
            mask.row_mut(1).fill(false);
            for s in 5..t {
                mask[[2, s]] = false;
            }
        }
        let drop = (round % 4 == 3).then(|| GateMasks {
            input: Some(
                (0..g)
                    .map(|_| Array2::from_shape_fn((b, i), |_| f64::from(next() > -0.4) * 1.4))
                    .collect(),
            ),
            recurrent: (0..g)
                .map(|_| Array2::from_shape_fn((b, h), |_| f64::from(next() > -0.5) * 1.3))
                .collect(),
        });
        let out_shape = if cfg.return_sequences {
            vec![b, t, h]
        } else {
            vec![b, h]
        };
        let cot = LstmCotangents {
            output: ArrayD::from_shape_fn(out_shape, |_| next()),
            h: Some(Array2::from_shape_fn((b, h), |_| next())),
            c: Some(Array2::from_shape_fn((b, h), |_| next())),
        };
        let m = Some(mask.view());
        // (half the rounds from given initial states, as `initial_state`)
        let states = (
            Array2::from_shape_fn((b, h), |_| next()),
            Array2::from_shape_fn((b, h), |_| next()),
        );
        let init = ((round / 2) % 2 == 1).then(|| (states.0.view(), states.1.view()));
        let (call, tape) = forward((&cfg, &w), x.view(), m, init, drop.as_ref()).unwrap();
        let want = backward((&cfg, &w), x.view(), &tape, &cot).unwrap();
        for seg in [1, 2, 3, 4, 11, 16] {
            let (rc, ck) =
                forward_recomputed((&cfg, &w), x.view(), m, init, drop.as_ref(), seg).unwrap();
            let got = backward_recomputed((&cfg, &w), x.view(), &ck, &cot).unwrap();
            let e = [
                worst(&rc.output.view(), &call.output.view()),
                worst(&rc.h.view().into_dyn(), &call.h.view().into_dyn()),
                worst(&rc.c.view().into_dyn(), &call.c.view().into_dyn()),
                worst(
                    &got.kernel.view().into_dyn(),
                    &want.kernel.view().into_dyn(),
                ),
                worst(
                    &got.recurrent_kernel.view().into_dyn(),
                    &want.recurrent_kernel.view().into_dyn(),
                ),
                worst(
                    &got.bias.as_ref().unwrap().view().into_dyn(),
                    &want.bias.as_ref().unwrap().view().into_dyn(),
                ),
                worst(&got.x.view().into_dyn(), &want.x.view().into_dyn()),
                worst(&got.h0.view().into_dyn(), &want.h0.view().into_dyn()),
                worst(&got.c0.view().into_dyn(), &want.c0.view().into_dyn()),
            ]
            .into_iter()
            .fold(0.0, f64::max);
            assert!(e < 1e-12, "round {round} ({class}) seg {seg}: {e:e}");
            worst_seen = worst_seen.max(e);
        }
    }
    println!("recompute mode vs the whole tape: worst {worst_seen:.1e}");
}

/// The step loop flushes subnormal cotangents to zero (`flush_subnormal`): cotangents of
/// 1e-39 (subnormal in f32) give gradients of exactly zero for every cell, while 1e-30
/// (normal) ones, the same pass otherwise, give nonzero gradients and no subnormal value in
/// the carried `h0`/`c0` cotangents.
#[test]
fn subnormal_cotangents_flush_to_zero() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8
    };
    let (b, t, i, h) = (3, 6, 2, 4);
    for class in ["LSTM", "GRU", "SimpleRNN"] {
        let cfg = LstmConfig::from_keras_class(class, &serde_json::json!({ "units": h })).unwrap();
        let n = cfg.cell.gates() * h;
        let nb = if class == "GRU" { 2 * n } else { n };
        let w = LstmWeights::new(
            &cfg,
            i,
            Array2::from_shape_fn((i, n), |_| next()),
            Array2::from_shape_fn((h, n), |_| next()),
            Some(Array1::from_shape_fn(nb, |_| next())),
        )
        .unwrap();
        let x = Array3::from_shape_fn((b, t, i), |_| next());
        let (_, tape) = forward((&cfg, &w), x.view(), None, None, None).unwrap();
        let grads = |scale: f32| {
            let cot = LstmCotangents {
                output: ArrayD::from_elem(vec![b, h], scale),
                h: Some(Array2::from_elem((b, h), scale)),
                c: Some(Array2::from_elem((b, h), scale)),
            };
            backward((&cfg, &w), x.view(), &tape, &cot).unwrap()
        };
        assert!(1e-39f32.is_subnormal() && 1e-30f32.is_normal());
        let tiny = grads(1e-39);
        let all = |g: &super::LstmGrads<f32>| {
            g.kernel
                .iter()
                .chain(g.recurrent_kernel.iter())
                .chain(g.bias.iter().flatten())
                .chain(g.x.iter())
                .chain(g.h0.iter())
                .copied()
                .collect::<Vec<f32>>()
        };
        assert!(
            all(&tiny).iter().all(|&v| v == 0.0),
            "{class}: subnormal cotangents left {:?}",
            all(&tiny)
        );
        let small = grads(1e-30);
        assert!(all(&small).iter().any(|&v| v != 0.0), "{class}");
        assert!(
            small
                .h0
                .iter()
                .chain(small.c0.iter())
                .all(|v| !v.is_subnormal()),
            "{class}: {:?}",
            small.h0
        );
    }
}
