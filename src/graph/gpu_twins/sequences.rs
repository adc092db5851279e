//! Twins of the layers over sequences: Embedding, Masking, Dense, the recurrent cells with
//! initial states and masks, Conv1D, pooling, attention, Dot; and thousands of timesteps
//! through every graph kernel.

use super::*;

#[test]
fn tokens_dense_and_recurrent_layers_match_their_cpu_twins() {
    let Some(ctx) = ctx("tokens_dense_and_recurrent_layers_match_their_cpu_twins") else {
        return;
    };
    let mut rng = Rng(0x853c49e6748fea9b);
    for round in 0..3 {
        let (b, t, vocab, dim) = (
            1 + rng.below(3),
            1 + rng.below(8),
            2 + rng.below(9),
            1 + rng.below(5),
        );
        let ids = ArrayD::from_shape_fn(IxDyn(&[b, t]), |_| rng.below(vocab) as f32);
        let table = Array2::from_shape_fn((vocab, dim), |_| rng.uniform());
        let mut op = Embedding {
            name: "embedding".into(),
            table,
            mask_zero: round != 1,
        };
        check(
            &ctx,
            "embedding",
            &mut op,
            &[value(ids, None)],
            &[],
            &[],
            json!({}),
        );

        let c = 1 + rng.below(5);
        let mut x = rng.array(&[b, t, c]).mapv(|v| v * 30.0);
        if round == 2 {
            poison(&mut x, &mut rng);
        }
        for s in 0..t {
            if (s + round) % 3 == 0 {
                for i in 0..b {
                    for k in 0..c {
                        x[[i, s, k]] = 0.0;
                    }
                }
            }
        }
        check(
            &ctx,
            "masking",
            &mut Masking { value: 0.0 },
            &[value(x.clone(), None)],
            &[],
            &[],
            json!({}),
        );

        let units = 1 + rng.below(6);
        for act in [Act::Elementwise(Activation::Tanh), Act::Softmax] {
            let mut op = Dense {
                name: "dense".into(),
                kernel: Array2::from_shape_fn((c, units), |_| rng.uniform()),
                bias: (round != 2).then(|| Array1::from_shape_fn(units, |_| rng.uniform())),
                act,
            };
            let m = rng.mask(b, t);
            check(
                &ctx,
                "dense",
                &mut op,
                &[value(x.clone(), Some(m))],
                &[],
                &[],
                json!({}),
            );
            let x2 = rng.array(&[b, c]);
            check(
                &ctx,
                "dense 2-D",
                &mut op,
                &[value(x2, None)],
                &[],
                &[],
                json!({}),
            );
        }

        // recurrent layers with initial_state tensors and masks, every cell
        for config in [
            crate::LstmConfig::new(units)
                .return_sequences(true)
                .return_state(true),
            crate::LstmConfig::gru(units).return_state(true),
            crate::LstmConfig::simple_rnn(units).return_sequences(true),
        ] {
            let net = crate::Network::<f32>::random(
                &crate::LayerConfig::Lstm(config.clone()),
                c,
                round as u64,
            )
            .unwrap();
            // (both mask rules with initial states: Keras 3's unmasked call, Keras 2's masked)
            let mut op = Recurrent {
                name: "rnn".into(),
                net,
                keras2_call_mask: round == 1,
                cudnn_class: None,
            };
            let init: Vec<Value> = (0..config.cell.states())
                .map(|_| value(rng.array(&[b, units]), None))
                .collect();
            let m = rng.mask(b, t);
            check(
                &ctx,
                "recurrent",
                &mut op,
                &[value(x.clone(), Some(m))],
                &init,
                &[],
                json!({}),
            );
            check(
                &ctx,
                "recurrent, zero state",
                &mut op,
                &[value(x.clone(), None)],
                &[],
                &[],
                json!({}),
            );
        }
    }
}

#[test]
fn window_and_attention_layers_match_their_cpu_twins() {
    let Some(ctx) = ctx("window_and_attention_layers_match_their_cpu_twins") else {
        return;
    };
    let mut rng = Rng(0xda942042e4dd58b5);
    let mut worst = 0.0f32;
    for round in 0..8 {
        let (b, t) = (1 + rng.below(3), 1 + rng.below(13));
        // Conv1D over random options
        let groups = 1 + rng.below(2);
        let cg = 1 + rng.below(4);
        let filters = groups * (1 + rng.below(5));
        let k = 1 + rng.below(4);
        let padding = ["valid", "same", "causal"][rng.below(3)];
        let stride = 1 + rng.below(3);
        let dilation = if stride == 1 { 1 + rng.below(3) } else { 1 };
        let span = dilation * (k - 1) + 1;
        let t = if padding == "valid" { t.max(span) } else { t };
        let x = rng.array(&[b, t, cg * groups]);
        let kernel = rng.array(&[k, cg, filters]);
        let bias = rng.array(&[filters]);
        let act = ["relu", "linear", "tanh"][round % 3];
        let cfg = json!({"padding": padding, "strides": stride, "dilation_rate": dilation,
            "groups": groups, "activation": act,
            "use_bias": round % 4 != 3});
        let w = move || Ok(vec![kernel.clone(), bias.clone()]);
        let mut op = crate::graph::conv::build("Conv1D", &cfg, "conv", &w)
            .unwrap()
            .unwrap();
        let m = rng.mask(b, t);
        worst = worst.max(check(
            &ctx,
            &format!("conv1d {cfg}"),
            op.as_mut(),
            &[value(x.clone(), Some(m))],
            &[],
            &[],
            json!({}),
        ));
        // pooling
        for class in ["MaxPooling1D", "AveragePooling1D"] {
            let size = 1 + rng.below(3);
            let pad = ["valid", "same"][rng.below(2)];
            let t2 = if pad == "valid" { t.max(size) } else { t };
            let x = rng.array(&[b, t2, 3]);
            let cfg = json!({"pool_size": size, "strides": 1 + rng.below(3), "padding": pad});
            let mut op = crate::graph::conv::build(class, &cfg, class, &|| Ok(Vec::new()))
                .unwrap()
                .unwrap();
            check(
                &ctx,
                &format!("{class} {cfg}"),
                op.as_mut(),
                &[value(x, None)],
                &[],
                &[],
                json!({}),
            );
        }
        for average in [true, false] {
            let mut x = rng.array(&[b, t, 4]);
            if round == 7 {
                poison(&mut x, &mut rng);
            }
            let m = rng.mask(b, t);
            let mut op = GlobalPool {
                average,
                keepdims: round % 2 == 0,
                spatial: false,
            };
            check(
                &ctx,
                "global pool",
                &mut op,
                &[value(x, Some(m))],
                &[],
                &[],
                json!({}),
            );
        }
        // attention, every score mode, masks on query and value, causal, scores returned
        let (tq, tv, dim) = (1 + rng.below(5), 1 + rng.below(6), 1 + rng.below(5));
        let q = value(
            rng.array(&[b, tq, dim]),
            (round % 2 == 0).then(|| rng.mask(b, tq)),
        );
        let vv = value(
            rng.array(&[b, tv, dim]),
            (round % 3 != 0).then(|| rng.mask(b, tv)),
        );
        let key = value(rng.array(&[b, tv, dim]), None);
        for (class, cfg, weights) in [
            ("Attention", json!({"use_scale": false}), vec![]),
            (
                "Attention",
                json!({"use_scale": true}),
                vec![rng.array(&[])],
            ),
            (
                "Attention",
                json!({"use_scale": true, "score_mode": "concat"}),
                vec![rng.array(&[]), rng.array(&[])],
            ),
            (
                "AdditiveAttention",
                json!({"use_scale": true}),
                vec![rng.array(&[dim])],
            ),
            ("AdditiveAttention", json!({"use_scale": false}), vec![]),
        ] {
            let w = move || Ok(weights.clone());
            let mut op = crate::graph::conv::build(class, &cfg, "attention", &w)
                .unwrap()
                .unwrap();
            let kwargs = json!({"use_causal_mask": round % 4 == 1, "return_attention_scores": round % 2 == 1});
            let ins = if round % 2 == 0 {
                vec![q.clone(), vv.clone()]
            } else {
                vec![q.clone(), vv.clone(), key.clone()]
            };
            check(
                &ctx,
                &format!("{class} {cfg} {kwargs}"),
                op.as_mut(),
                &ins,
                &[],
                &[],
                kwargs,
            );
        }
        // Dot over every axis pair of rank-2 and rank-3 inputs
        let (p, r) = (1 + rng.below(4), 1 + rng.below(4));
        let x3 = rng.array(&[b, p, r]);
        let y3 = rng.array(&[b, p, r]);
        for (axes, normalize) in [((2, 2), false), ((1, 1), true), ((-1, -1), true)] {
            let mut op = Dot {
                name: "dot".into(),
                axes,
                normalize,
                keras2_normalize: false,
            };
            check(
                &ctx,
                "dot 3-D",
                &mut op,
                &[value(x3.clone(), None), value(y3.clone(), None)],
                &[],
                &[],
                json!({}),
            );
        }
        let x2 = rng.array(&[b, r]);
        let y2 = rng.array(&[b, r]);
        let mut op = Dot {
            name: "dot".into(),
            axes: (1, 1),
            normalize: round % 2 == 0,
            keras2_normalize: false,
        };
        check(
            &ctx,
            "dot 2-D",
            &mut op,
            &[value(x2.clone(), None), value(y2.clone(), None)],
            &[],
            &[],
            json!({}),
        );
        // vectors of squared norm about 1e-13, between Keras 3's floor (1e-14) and Keras
        // 2's (1e-12): the two normalizations give results 3x apart or more
        for keras2_normalize in [false, true] {
            let mut op = Dot {
                name: "dot".into(),
                axes: (1, 1),
                normalize: true,
                keras2_normalize,
            };
            let tiny = |a: &ndarray::ArrayD<f32>| a.mapv(|v| v * 2e-7 + 1e-7);
            check(
                &ctx,
                "dot 2-D of tiny vectors",
                &mut op,
                &[value(tiny(&x2), None), value(tiny(&y2), None)],
                &[],
                &[],
                json!({}),
            );
        }
        let x1 = Array3::from_shape_fn((b, p, r), |_| rng.uniform()).into_dyn();
        let mut op = Dot {
            name: "dot".into(),
            axes: (2, 1),
            normalize: false,
            keras2_normalize: false,
        };
        let y = rng.array(&[b, r]);
        check(
            &ctx,
            "dot 3-D by 2-D",
            &mut op,
            &[value(x1, None), value(y, None)],
            &[],
            &[],
            json!({}),
        );
    }
    println!("worst Conv1D difference: {worst:e}");
}

/// Thousands of timesteps through every graph kernel (index arithmetic past small shapes,
/// long reductions over time).
#[test]
fn long_sequences_through_every_graph_kernel() {
    let Some(ctx) = ctx("long_sequences_through_every_graph_kernel") else {
        return;
    };
    let mut rng = Rng(0x5851f42d4c957f2d);
    let (b, t, c) = (2, 3000, 3);
    let x = rng.array(&[b, t, c]);
    let m = rng.mask(b, t);
    let v = || value(x.clone(), Some(m.clone()));
    let kernel = rng.array(&[3, c, 5]);
    let bias = rng.array(&[5]);
    let w = move || Ok(vec![kernel.clone(), bias.clone()]);
    let cfg = json!({"padding": "causal", "dilation_rate": 2, "activation": "relu"});
    let mut conv = crate::graph::conv::build("Conv1D", &cfg, "conv", &w)
        .unwrap()
        .unwrap();
    check(
        &ctx,
        "long conv1d",
        conv.as_mut(),
        &[v()],
        &[],
        &[],
        json!({}),
    );
    let cfg = json!({"pool_size": 3, "strides": 2, "padding": "same"});
    let mut pool = crate::graph::conv::build("MaxPooling1D", &cfg, "pool", &|| Ok(Vec::new()))
        .unwrap()
        .unwrap();
    check(
        &ctx,
        "long max pooling",
        pool.as_mut(),
        &[v()],
        &[],
        &[],
        json!({}),
    );
    let mut pad =
        crate::graph::conv::build(
            "UpSampling1D",
            &json!({"size": 2}),
            "up",
            &|| Ok(Vec::new()),
        )
        .unwrap()
        .unwrap();
    check(
        &ctx,
        "long upsampling",
        pad.as_mut(),
        &[v()],
        &[],
        &[],
        json!({}),
    );
    for average in [true, false] {
        let mut op = GlobalPool {
            average,
            keepdims: false,
            spatial: false,
        };
        check(
            &ctx,
            "long global pool",
            &mut op,
            &[v()],
            &[],
            &[],
            json!({}),
        );
    }
    let mut cat = Merge {
        name: "cat".into(),
        class: "Concatenate".into(),
        axis: 1,
    };
    check(
        &ctx,
        "long concatenate",
        &mut cat,
        &[value(x.clone(), None), value(x.clone(), None)],
        &[],
        &[],
        json!({}),
    );
    let mut norm = Norm {
        name: "ln".into(),
        eps: 1e-3,
        layer: true,
        gamma: None,
        beta: None,
        mean: None,
        var: None,
        axis: -1,
    };
    check(
        &ctx,
        "long layer norm",
        &mut norm,
        &[v()],
        &[],
        &[],
        json!({}),
    );
    let q = value(rng.array(&[b, 4, c]), None);
    let mut att =
        crate::graph::conv::build("Attention", &json!({"use_scale": false}), "att", &|| {
            Ok(Vec::new())
        })
        .unwrap()
        .unwrap();
    check(
        &ctx,
        "long attention",
        att.as_mut(),
        &[q, v()],
        &[],
        &[],
        json!({"return_attention_scores": true}),
    );
    let mut dot = Dot {
        name: "dot".into(),
        axes: (1, 1),
        normalize: true,
        keras2_normalize: false,
    };
    check(
        &ctx,
        "long dot over time",
        &mut dot,
        &[value(x.clone(), None), value(x.clone(), None)],
        &[],
        &[],
        json!({}),
    );
    let ids = ArrayD::from_shape_fn(IxDyn(&[b, t]), |_| rng.below(7) as f32);
    let mut emb = Embedding {
        name: "e".into(),
        table: Array2::from_shape_fn((7, 4), |_| rng.uniform()),
        mask_zero: true,
    };
    check(
        &ctx,
        "long embedding",
        &mut emb,
        &[value(ids, None)],
        &[],
        &[],
        json!({}),
    );
    let mut rep = RepeatVector { n: t };
    check(
        &ctx,
        "long repeat",
        &mut rep,
        &[value(rng.array(&[b, c]), None)],
        &[],
        &[],
        json!({}),
    );
}

#[test]
fn multi_head_attention_matches_its_cpu_twin() {
    let Some(ctx) = ctx("multi_head_attention_matches_its_cpu_twin") else {
        return;
    };
    use crate::graph::{MhaOp, MhaProjection};
    let mut rng = Rng(0x6a09_e667_f3bc_c908);
    let proj = |rng: &mut Rng, rows: usize, cols: usize, bias: bool| MhaProjection {
        kernel: rng
            .array(&[rows, cols])
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap(),
        bias: bias.then(|| rng.array(&[cols]).iter().copied().collect()),
    };
    for round in 0..10 {
        let (b, t, s) = (1 + rng.below(3), 1 + rng.below(8), 1 + rng.below(8));
        let (n, h, hv) = (1 + rng.below(3), 1 + rng.below(4), 1 + rng.below(4));
        let (dq, dv, dout) = (1 + rng.below(5), 1 + rng.below(5), 1 + rng.below(5));
        // a long key sequence once (the loop budget on lavapipe)
        let s = if round == 9 { 3000 } else { s };
        let bias = round % 3 != 0;
        let mut op = MhaOp {
            name: "mha".into(),
            heads: n,
            key_dim: h,
            value_dim: hv,
            query: proj(&mut rng, dq, n * h, bias),
            key: proj(&mut rng, dv, n * h, bias),
            value: proj(&mut rng, dv, n * hv, bias),
            output: proj(&mut rng, n * hv, dout, bias),
            dropout: round % 4 == 1,
            scratch: Default::default(),
        };
        let mut xq = rng.array(&[b, t, dq]);
        if round % 5 == 2 {
            xq[[0, 0, 0]] = f32::NAN;
        }
        let q = value(xq, (round % 2 == 0).then(|| rng.mask(b, t)));
        let v = value(
            rng.array(&[b, s, dv]),
            (round % 3 == 1).then(|| rng.mask(b, s)),
        );
        let mut inputs = vec![q, v.clone()];
        if round % 4 == 3 {
            inputs.push(value(rng.array(&[b, s, dv]), Some(rng.mask(b, s))));
        }
        let kwargs = json!({
            "use_causal_mask": round % 3 == 2,
            "return_attention_scores": round % 2 == 1,
        });
        check(
            &ctx,
            &format!("mha round {round}"),
            &mut op,
            &inputs,
            &[],
            &[],
            kwargs,
        );
    }
}
