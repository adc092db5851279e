//! Twins of the layers that move, combine or transform values: identity, RepeatVector,
//! Reshape/Flatten, Permute, padding, Concatenate; activations, ReLU options, PReLU, the op
//! layers of masks, the merges, normalization, TimeDistributed.

use super::*;

#[test]
fn value_moving_layers_match_their_cpu_twins() {
    let Some(ctx) = ctx("value_moving_layers_match_their_cpu_twins") else {
        return;
    };
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for round in 0..6 {
        let (b, t, c) = (1 + rng.below(3), 1 + rng.below(9), 1 + rng.below(5));
        let x = rng.array(&[b, t, c]);
        let m = (round % 2 == 0).then(|| rng.mask(b, t));
        let v = || value(x.clone(), m.clone());
        check(&ctx, "identity", &mut Identity, &[v()], &[], &[], json!({}));
        let n = 1 + rng.below(6);
        let x2 = rng.array(&[b, c]);
        check(
            &ctx,
            "repeat",
            &mut RepeatVector { n },
            &[value(x2, None)],
            &[],
            &[],
            json!({}),
        );
        check(
            &ctx,
            "flatten",
            &mut Reshape { target: None },
            &[v()],
            &[],
            &[],
            json!({}),
        );
        check(
            &ctx,
            "reshape",
            &mut Reshape {
                target: Some(vec![c as i64, -1]),
            },
            &[v()],
            &[],
            &[],
            json!({}),
        );
        check(
            &ctx,
            "permute",
            &mut Permute { dims: vec![2, 1] },
            &[v()],
            &[],
            &[],
            json!({}),
        );
        let w4 = 1 + rng.below(3);
        let x4 = rng.array(&[b, 2, 3, w4]);
        for dims in [vec![3, 1, 2], vec![2, 3, 1], vec![1, 3, 2]] {
            check(
                &ctx,
                "permute 4-D",
                &mut Permute { dims },
                &[value(x4.clone(), None)],
                &[],
                &[],
                json!({}),
            );
        }
        for class in ["ZeroPadding1D", "Cropping1D", "UpSampling1D"] {
            let (p0, p1) = (rng.below(3), rng.below(3));
            let cfg = match class {
                "ZeroPadding1D" => json!({"padding": [p0, p1]}),
                "Cropping1D" => json!({"cropping": [p0.min(t / 2), p1.min(t / 2)]}),
                _ => json!({"size": 1 + p0}),
            };
            let mut op = crate::graph::conv::build(class, &cfg, class, &|| Ok(Vec::new()))
                .unwrap()
                .unwrap();
            check(&ctx, class, op.as_mut(), &[v()], &[], &[], json!({}));
        }
        // Concatenate on each axis, with some inputs masked
        for axis in [-1i64, 1, 2] {
            let mut ins = Vec::new();
            for k in 0..(2 + rng.below(2)) {
                let shape = match axis {
                    1 => [b, 1 + rng.below(4), c],
                    _ => [b, t, 1 + rng.below(4)],
                };
                let steps = shape[1];
                let mask = ((k + round) % 2 == 0).then(|| rng.mask(b, steps));
                ins.push(value(rng.array(&shape), mask));
            }
            let mut op = Merge {
                name: "concat".into(),
                class: "Concatenate".into(),
                axis,
            };
            check(
                &ctx,
                &format!("concatenate axis {axis}"),
                &mut op,
                &ins,
                &[],
                &[],
                json!({}),
            );
        }
    }
}

#[test]
fn elementwise_layers_match_their_cpu_twins() {
    let Some(ctx) = ctx("elementwise_layers_match_their_cpu_twins") else {
        return;
    };
    let mut rng = Rng(0x2545f4914f6cdd1d);
    for round in 0..4 {
        let (b, t, c) = (1 + rng.below(3), 1 + rng.below(7), 1 + rng.below(6));
        let mut x = rng.array(&[b, t, c]).mapv(|v| v * 4.0);
        if round == 3 {
            poison(&mut x, &mut rng);
        }
        let m = (round % 2 == 1).then(|| rng.mask(b, t));
        let v = || value(x.clone(), m.clone());
        for a in [
            Activation::Relu,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Elu,
            Activation::Linear,
            Activation::HardSigmoid,
        ] {
            check(
                &ctx,
                &format!("{a:?}"),
                &mut Activate(Act::Elementwise(a)),
                &[v()],
                &[],
                &[],
                json!({}),
            );
        }
        check(
            &ctx,
            "softmax",
            &mut Activate(Act::Softmax),
            &[v()],
            &[],
            &[],
            json!({}),
        );
        for (slope, threshold, max) in [
            (0.3, 0.0, None),
            (0.1, 0.5, Some(1.5)),
            (0.0, 0.5, Some(0.7)),
            (0.2, 0.0, Some(1.0)),
            (0.0, 0.0, Some(6.0)),
        ] {
            let mut op = Leaky {
                slope,
                threshold,
                max,
            };
            check(&ctx, "relu options", &mut op, &[v()], &[], &[], json!({}));
        }
        for alpha_shape in [vec![t, c], vec![1, c], vec![t, 1]] {
            let mut op = PRelu {
                name: "prelu".into(),
                alpha: rng.array(&alpha_shape),
            };
            check(&ctx, "prelu", &mut op, &[v()], &[], &[], json!({}));
        }
        let mut tokens = x.mapv(|v| (v.abs() * 0.6).floor());
        tokens.as_slice_mut().unwrap()[0] = f32::NAN;
        check(
            &ctx,
            "not_equal",
            &mut NotEqual,
            &[value(tokens.clone(), m.clone())],
            &[],
            &[0.0],
            json!({}),
        );
        for keepdims in [false, true] {
            let mut op = AnyOp { axis: -1, keepdims };
            check(
                &ctx,
                "any",
                &mut op,
                &[value(tokens.clone(), None)],
                &[],
                &[],
                json!({}),
            );
        }
        // the op layers of Keras's merged masks: LogicalOr/And broadcasting, ExpandDims,
        // ZerosLike/OnesLike
        let bools = x.mapv(|v| f32::from(u8::from(v > 0.0)));
        let narrow = rng.array(&[b, t, 1]).mapv(|v| f32::from(u8::from(v > 0.0)));
        for class in ["LogicalOr", "LogicalAnd"] {
            let mut op = Merge {
                name: class.into(),
                class: class.into(),
                axis: -1,
            };
            let ins = [value(narrow.clone(), None), value(bools.clone(), m.clone())];
            check(&ctx, class, &mut op, &ins, &[], &[], json!({}));
        }
        let any =
            ArrayD::from_shape_fn(IxDyn(&[b, t]), |_| f32::from(u8::from(rng.uniform() > 0.0)));
        let mut op = crate::graph::core::ExpandDims { axis: -1 };
        check(
            &ctx,
            "expand_dims",
            &mut op,
            &[value(any, None)],
            &[],
            &[],
            json!({}),
        );
        for value_ in [0.0, 1.0] {
            let mut op = crate::graph::core::FillLike { value: value_ };
            check(&ctx, "zeros_like", &mut op, &[v()], &[], &[], json!({}));
        }
        // the merges, with every mask combination of two and three inputs
        for class in [
            "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
        ] {
            let n = if class == "Subtract" {
                2
            } else {
                2 + rng.below(2)
            };
            let ins: Vec<Value> = (0..n)
                .map(|k| {
                    let mut d = rng.array(&[b, t, c]);
                    if round == 3 && k == 0 {
                        poison(&mut d, &mut rng);
                    }
                    let mask = (round + k) % 3 != 0;
                    value(d, mask.then(|| rng.mask(b, t)))
                })
                .collect();
            let mut op = Merge {
                name: class.into(),
                class: class.into(),
                axis: -1,
            };
            check(&ctx, class, &mut op, &ins, &[], &[], json!({}));
        }
        // TimeDistributed around a layer with a time axis of its own, the mask kept
        let x4 = rng.array(&[b, t, 4, c]);
        let cfg = json!({"pool_size": 2, "padding": "same"});
        let inner = crate::graph::conv::build("MaxPooling1D", &cfg, "pool", &|| Ok(Vec::new()))
            .unwrap()
            .unwrap();
        let mut op = crate::graph::core::TimeDistributed {
            name: "td".into(),
            inner,
        };
        check(
            &ctx,
            "time distributed pooling",
            &mut op,
            &[value(x4, m.clone())],
            &[],
            &[],
            json!({}),
        );
        // normalization
        for layer in [true, false] {
            let w = |rng: &mut Rng| Some(Array1::from_shape_fn(c, |_| rng.uniform()));
            let mut op = Norm {
                name: "norm".into(),
                eps: 1e-3,
                layer,
                gamma: if round % 2 == 0 { w(&mut rng) } else { None },
                beta: w(&mut rng),
                mean: (!layer).then(|| Array1::from_shape_fn(c, |_| rng.uniform())),
                var: (!layer).then(|| Array1::from_shape_fn(c, |_| rng.uniform().abs() + 0.1)),
                axis: -1,
            };
            check(&ctx, "norm", &mut op, &[v()], &[], &[], json!({}));
        }
    }
}

#[test]
fn normalization_matches_its_cpu_twin() {
    let Some(ctx) = ctx("normalization_matches_its_cpu_twin") else {
        return;
    };
    use crate::graph::preprocessing::Normalize;
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    for round in 0..8 {
        let (b, t, c) = (1 + rng.below(3), 1 + rng.below(9), 1 + rng.below(5));
        let mut x = rng.array(&[b, t, c]);
        if round % 3 == 0 {
            // NaN and infinities propagate as on the CPU
            x[[0, 0, 0]] = f32::NAN;
            x[[b - 1, t - 1, c - 1]] = f32::INFINITY;
        }
        let m = (round % 2 == 0).then(|| rng.mask(b, t));
        // per feature, per (time, feature), scalar; adapted weights or config values
        let (axis, stats): (serde_json::Value, Vec<usize>) = match round % 4 {
            0 => (json!([-1]), vec![c]),
            1 => (json!([1, 2]), vec![t, c]),
            2 => (json!(null), vec![]),
            _ => (json!([2]), vec![c]),
        };
        let mut variance = rng.array(&stats).mapv(|v| v.abs() * 4.0);
        if let Some(v) = variance.iter_mut().next() {
            *v = 0.0; // the epsilon floor
        }
        let mean = rng.array(&stats);
        let cfg = json!({"axis": axis, "invert": round % 2 == 1, "mean": null, "variance": null});
        let mut op = Normalize::new(
            &cfg,
            "norm",
            vec![mean, variance, ArrayD::zeros(IxDyn(&[]))],
        )
        .unwrap();
        check(
            &ctx,
            "normalization",
            &mut op,
            &[value(x, m)],
            &[],
            &[],
            json!({}),
        );
    }
}
