//! Twins of the layers over images (`[B, H, W, C]`): Conv2D over random kernel sizes,
//! paddings, strides, dilations, groups and activations; MaxPooling2D/AveragePooling2D; the
//! global 2-D pools; BatchNormalization on 4-D; NaN/inf inputs; an image wider than a
//! workgroup tile in both directions and a 1,000-row one.

use super::*;
use serde_json::Value as Json;

/// A random Conv2D layer's config and weights for `cin` input channels.
fn random_conv(
    rng: &mut Rng,
    cin_per_group: usize,
    groups: usize,
    round: usize,
) -> (Json, Vec<ArrayD<f32>>) {
    let kernel_size = [1 + rng.below(4), 1 + rng.below(4)];
    let strides = [1 + rng.below(3), 1 + rng.below(3)];
    let dilation = if strides == [1, 1] {
        [1 + rng.below(3), 1 + rng.below(2)]
    } else {
        [1, 1]
    };
    let filters = groups * (1 + rng.below(5));
    let use_bias = round % 4 != 3;
    let padding = ["valid", "same"][rng.below(2)];
    let activation = ["relu", "linear", "tanh", "sigmoid"][round % 4];
    let cfg = json!({
        "kernel_size": kernel_size, "strides": strides, "dilation_rate": dilation,
        "padding": padding, "groups": groups, "activation": activation, "use_bias": use_bias,
    });
    let mut w = vec![rng.array(&[kernel_size[0], kernel_size[1], cin_per_group, filters])];
    if use_bias {
        w.push(rng.array(&[filters]));
    }
    (cfg, w)
}

#[test]
fn conv2d_and_pool2d_match_their_cpu_twins() {
    let Some(ctx) = ctx("conv2d_and_pool2d_match_their_cpu_twins") else {
        return;
    };
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut worst = 0.0f32;
    for round in 0..12 {
        let (b, h, w) = (1 + rng.below(3), 4 + rng.below(9), 4 + rng.below(9));
        let groups = 1 + rng.below(3);
        let cg = 1 + rng.below(4);
        let (cfg, weights) = random_conv(&mut rng, cg, groups, round);
        let mut x = rng.array(&[b, h, w, cg * groups]);
        if round % 4 == 1 {
            poison(&mut x, &mut rng);
        }
        let mut op =
            crate::graph::conv::build("Conv2D", &cfg, "conv2d", &move || Ok(weights.clone()))
                .unwrap()
                .unwrap();
        worst = worst.max(check(
            &ctx,
            &format!("conv2d {cfg}"),
            op.as_mut(),
            &[value(x.clone(), None)],
            &[],
            &[],
            json!({}),
        ));
        for class in ["MaxPooling2D", "AveragePooling2D"] {
            let size = [1 + rng.below(3), 1 + rng.below(3)];
            let strides = [1 + rng.below(3), 1 + rng.below(3)];
            let padding = ["valid", "same"][rng.below(2)];
            let cfg = json!({"pool_size": size, "strides": strides, "padding": padding});
            let mut op = crate::graph::conv::build(class, &cfg, class, &|| Ok(Vec::new()))
                .unwrap()
                .unwrap();
            check(
                &ctx,
                &format!("{class} {cfg}"),
                op.as_mut(),
                &[value(x.clone(), None)],
                &[],
                &[],
                json!({}),
            );
        }
        for average in [true, false] {
            let mut op = GlobalPool {
                average,
                keepdims: round % 2 == 0,
                spatial: true,
            };
            check(
                &ctx,
                "global pool 2d",
                &mut op,
                &[value(x.clone(), None)],
                &[],
                &[],
                json!({}),
            );
        }
        let c = cg * groups;
        let mut bn = Norm {
            name: "bn".into(),
            eps: 1e-3,
            layer: false,
            gamma: Some(Array1::from_shape_fn(c, |_| rng.uniform())),
            beta: None,
            mean: Some(Array1::from_shape_fn(c, |_| rng.uniform())),
            var: Some(Array1::from_shape_fn(c, |_| rng.uniform().abs() + 0.1)),
            axis: [-1, 3][round % 2],
        };
        check(
            &ctx,
            "batch norm 4-d",
            &mut bn,
            &[value(x, None)],
            &[],
            &[],
            json!({}),
        );
    }
    // Large: 150 x 90 output pixels (several 64-row tiles across an image row), 70 filters
    // (two column tiles), 3 x 3 x 5 = 45 reduction values (three rounds); and a 1,000 x 3
    // image with a tall kernel.
    for (shape, cfg, kshape) in [
        (
            [2, 150, 90, 5],
            json!({"kernel_size": [3, 3], "padding": "same", "activation": "relu"}),
            [3, 3, 5, 70],
        ),
        (
            [1, 1000, 3, 2],
            json!({"kernel_size": [7, 2], "dilation_rate": [3, 1], "padding": "valid"}),
            [7, 2, 2, 3],
        ),
    ] {
        let x = rng.array(&shape);
        let kernel = rng.array(&kshape);
        let bias = rng.array(&[kshape[3]]);
        let mut op = crate::graph::conv::build("Conv2D", &cfg, "big", &move || {
            Ok(vec![kernel.clone(), bias.clone()])
        })
        .unwrap()
        .unwrap();
        worst = worst.max(check(
            &ctx,
            &format!("conv2d {shape:?}"),
            op.as_mut(),
            &[value(x.clone(), None)],
            &[],
            &[],
            json!({}),
        ));
        let mut pool = crate::graph::conv::build(
            "MaxPooling2D",
            &json!({"pool_size": [3, 2], "padding": "same"}),
            "p",
            &|| Ok(Vec::new()),
        )
        .unwrap()
        .unwrap();
        check(
            &ctx,
            "big pool",
            pool.as_mut(),
            &[value(x, None)],
            &[],
            &[],
            json!({}),
        );
    }
    // ZeroPadding2D / Cropping2D / UpSampling2D of random sizes (the gather kernel)
    for round in 0..6 {
        let (b, h, w, c) = (
            1 + rng.below(2),
            2 + rng.below(6),
            2 + rng.below(6),
            1 + rng.below(3),
        );
        let mut x = rng.array(&[b, h, w, c]);
        if round == 5 {
            poison(&mut x, &mut rng);
        }
        let zero = [(0, 0); 2];
        let mut op = match round % 3 {
            0 => crate::graph::Pad2 {
                name: "ZeroPadding2D".into(),
                pad: [(rng.below(3), rng.below(3)), (rng.below(3), rng.below(3))],
                crop: zero,
                repeat: [1, 1],
            },
            1 => crate::graph::Pad2 {
                name: "Cropping2D".into(),
                pad: zero,
                crop: [(rng.below(2), rng.below(1)), (rng.below(1), rng.below(2))],
                repeat: [1, 1],
            },
            _ => crate::graph::Pad2 {
                name: "UpSampling2D".into(),
                pad: zero,
                crop: zero,
                repeat: [1 + rng.below(3), 1 + rng.below(3)],
            },
        };
        check(
            &ctx,
            &format!("{op:?}"),
            &mut op,
            &[value(x, None)],
            &[],
            &[],
            json!({}),
        );
    }
    println!("worst Conv2D difference: {worst:e}");
}

/// A ConvLSTM layer of random options (rank, kernel, strides or dilation, padding,
/// activations, bias, return_sequences/state, go_backwards) for `cin` channels.
fn random_conv_lstm(
    rng: &mut Rng,
    rank: usize,
    cin: usize,
    round: usize,
) -> crate::graph::conv_lstm::ConvLstm {
    let (class, cfg, w) = random_conv_lstm_parts(rng, rank, cin, round);
    crate::graph::conv_lstm::build(class, &cfg, "conv_lstm", w).unwrap()
}

/// The class, config and weights of [`random_conv_lstm`].
fn random_conv_lstm_parts(
    rng: &mut Rng,
    rank: usize,
    cin: usize,
    round: usize,
) -> (&'static str, serde_json::Value, Vec<ndarray::ArrayD<f32>>) {
    let k: Vec<usize> = (0..rank).map(|_| 1 + rng.below(3)).collect();
    let strided = round % 3 == 1;
    let strides: Vec<usize> = (0..rank)
        .map(|_| if strided { 1 + rng.below(2) } else { 1 })
        .collect();
    let dilation: Vec<usize> = (0..rank)
        .map(|_| if strided { 1 } else { 1 + rng.below(2) })
        .collect();
    let filters = 1 + rng.below(4);
    let use_bias = round % 4 != 2;
    let padding = ["valid", "same"][rng.below(2)];
    let (activation, recurrent) = [
        ("tanh", "sigmoid"),
        ("relu", "hard_sigmoid"),
        ("tanh", "hard_sigmoid"),
    ][round % 3];
    let cfg = json!({
        "filters": filters, "kernel_size": k, "strides": strides, "dilation_rate": dilation,
        "padding": padding, "activation": activation, "recurrent_activation": recurrent,
        "use_bias": use_bias, "return_sequences": round.is_multiple_of(2), "return_state": round.is_multiple_of(3),
        "go_backwards": round % 4 == 1,
    });
    let mut shape: Vec<usize> = k.clone();
    shape.extend([cin, 4 * filters]);
    let mut w = vec![rng.array(&shape)];
    *shape.get_mut(rank).expect("channels") = filters;
    w.push(rng.array(&shape));
    if use_bias {
        w.push(rng.array(&[4 * filters]));
    }
    let class = if rank == 1 {
        "ConvLSTM1D"
    } else {
        "ConvLSTM2D"
    };
    (class, cfg, w)
}

#[test]
fn conv_lstm_matches_its_cpu_twin() {
    let Some(ctx) = ctx("conv_lstm_matches_its_cpu_twin") else {
        return;
    };
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut worst = 0.0f32;
    for round in 0..12 {
        let rank = 1 + round % 2;
        let (b, t, cin) = (1 + rng.below(3), 1 + rng.below(6), 1 + rng.below(3));
        let mut op = random_conv_lstm(&mut rng, rank, cin, round);
        let mut shape = vec![b, t];
        shape.extend((0..rank).map(|_| 3 + rng.below(5)));
        shape.push(cin);
        let mut x = rng.array(&shape);
        if round % 5 == 4 {
            poison(&mut x, &mut rng);
        }
        // every mask pattern in turn: none, random (steps masked anywhere, whole rows)
        let mask = (round % 3 != 0).then(|| rng.mask(b, t));
        worst = worst.max(check(
            &ctx,
            &format!("conv_lstm round {round}"),
            &mut op,
            &[value(x, mask)],
            &[],
            &[],
            json!({}),
        ));
    }
    // 1,000 steps on a 2-D layer with a mask: the per-step dispatches, the states carried
    let mut op = random_conv_lstm(&mut rng, 2, 2, 0);
    let (b, t) = (2, 1000);
    let x = rng.array(&[b, t, 4, 3, 2]);
    let m = rng.mask(b, t);
    worst = worst.max(check(
        &ctx,
        "long conv_lstm",
        &mut op,
        &[value(x, Some(m))],
        &[],
        &[],
        json!({}),
    ));
    println!("worst ConvLSTM difference: {worst:e}");
}

/// Bidirectional ConvLSTM: random layers (the backward one a copy, or its own config) under
/// every merge mode and mask pattern, with and without the four initial states.
#[test]
fn bidirectional_conv_lstm_matches_its_cpu_twin() {
    let Some(ctx) = ctx("bidirectional_conv_lstm_matches_its_cpu_twin") else {
        return;
    };
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut worst = 0.0f32;
    for round in 0..10 {
        let rank = 1 + round % 2;
        let (b, t, cin) = (1 + rng.below(3), 1 + rng.below(5), 1 + rng.below(3));
        let (class, cfg, mut w) = random_conv_lstm_parts(&mut rng, rank, cin, round);
        let merge = [
            json!("concat"),
            json!("sum"),
            json!("mul"),
            json!("ave"),
            json!(null),
        ][round % 5]
            .clone();
        let mut bi = json!({"layer": {"class_name": class, "config": cfg}, "merge_mode": merge});
        if round % 3 == 2 {
            // a backward layer of its own: other activations, same shapes
            let mut back = cfg.clone();
            back["go_backwards"] = json!(!cfg["go_backwards"].as_bool().unwrap());
            back["activation"] = json!("relu");
            back["recurrent_activation"] = json!("hard_sigmoid");
            bi["backward_layer"] = json!({"class_name": class, "config": back});
        }
        let rest: Vec<_> = w.iter().map(|a| a.mapv(|v| 0.7 * v - 0.1)).collect();
        w.extend(rest);
        let mut op = crate::graph::conv_lstm::build_bidirectional(&bi, "bi", w).unwrap();
        let mut shape = vec![b, t];
        shape.extend((0..rank).map(|_| 3 + rng.below(4)));
        shape.push(cin);
        let mut x = rng.array(&shape);
        if round % 4 == 3 {
            poison(&mut x, &mut rng);
        }
        let mask = (round % 3 != 0).then(|| rng.mask(b, t));
        let states: Vec<Value> = if round % 4 == 1 {
            let hw: Vec<usize> = op.state_shape(&shape).unwrap();
            (0..4).map(|_| value(rng.array(&hw), None)).collect()
        } else {
            Vec::new()
        };
        worst = worst.max(check(
            &ctx,
            &format!("bidirectional conv_lstm round {round}"),
            &mut op,
            &[value(x, mask)],
            &states,
            &[],
            json!({}),
        ));
    }
    println!("worst Bidirectional ConvLSTM difference: {worst:e}");
}
