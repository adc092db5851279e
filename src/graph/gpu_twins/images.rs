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
    println!("worst Conv2D difference: {worst:e}");
}
