//! The image and ConvLSTM layers' tests: Conv2D, the 2-D poolings and ConvLSTM1D/2D against
//! central differences, tied maxima, refused options, a long ConvLSTM sequence.

use super::from_keras;
use super::tests::{check, op, random};
use ndarray::{Array2, ArrayD, IxDyn};
use serde_json::json;

/// ConvLSTM1D and ConvLSTM2D against central differences: paddings, strides, dilations,
/// `go_backwards`, sequences or the last output, masks (a fully masked row, masked first and
/// last steps), `zero_output_for_mask`, other activations, no bias.
#[test]
fn conv_lstm_matches_central_differences() {
    let mut worst = 0.0f64;
    let mut mask = Array2::from_elem((2, 4), true);
    mask[[0, 0]] = false;
    mask[[0, 3]] = false;
    mask[[1, 1]] = false;
    let mut all_masked = mask.clone();
    all_masked.row_mut(1).fill(false);
    let kernels = |kh: usize, kw: usize, cin: usize, f: usize, rank: usize, bias: bool| {
        let k = |c: usize, seed: u64| {
            let shape: Vec<usize> = if rank == 1 {
                vec![kw, c, 4 * f]
            } else {
                vec![kh, kw, c, 4 * f]
            };
            random(&shape, seed).mapv(|v| (0.6 * v) as f32)
        };
        let mut w = vec![k(cin, 71), k(f, 72)];
        if bias {
            w.push(random(&[4 * f], 73).mapv(|v| (0.3 * v) as f32));
        }
        w
    };
    for (class, cfg, x, w) in [
        (
            "ConvLSTM2D",
            json!({"filters": 2, "kernel_size": [2, 2], "padding": "same",
                   "return_sequences": true}),
            random(&[2, 4, 3, 4, 2], 81),
            kernels(2, 2, 2, 2, 2, true),
        ),
        (
            "ConvLSTM2D",
            json!({"filters": 2, "kernel_size": [3, 2], "strides": [2, 1],
                   "padding": "valid", "go_backwards": true}),
            random(&[2, 4, 5, 3, 1], 82),
            kernels(3, 2, 1, 2, 2, true),
        ),
        (
            "ConvLSTM1D",
            json!({"filters": 2, "kernel_size": 3, "dilation_rate": 2, "padding": "same",
                   "return_sequences": true, "zero_output_for_mask": true,
                   "activation": "relu", "recurrent_activation": "hard_sigmoid",
                   "use_bias": false}),
            random(&[2, 4, 6, 3], 83),
            kernels(1, 3, 3, 2, 1, false),
        ),
        (
            "ConvLSTM1D",
            json!({"filters": 3, "kernel_size": 2, "strides": 2,
                   "return_sequences": true, "go_backwards": true}),
            random(&[2, 4, 5, 2], 84),
            kernels(1, 2, 2, 3, 1, true),
        ),
    ] {
        for m in [None, Some(mask.clone()), Some(all_masked.clone())] {
            let e = check(&mut op(class, cfg.clone(), w.clone()), x.clone(), m.clone());
            assert!(e < 1e-8, "{class} {cfg} mask {}: {e:e}", m.is_some());
            worst = worst.max(e);
        }
    }
    // refused by name
    for (key, v) in [("return_state", json!(true)), ("stateful", json!(true))] {
        let mut cfg = json!({"filters": 2, "kernel_size": [2, 2]});
        cfg[key] = v;
        let e = from_keras::<f64>("ConvLSTM2D", &cfg, "cl", kernels(2, 2, 2, 2, 2, true))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains("cl"), "{e}");
    }
    let e = from_keras::<f64>(
        "ConvLSTM2D",
        &json!({"filters": 2, "kernel_size": [2, 2]}),
        "cl",
        kernels(3, 2, 2, 2, 2, true),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cl/kernel"), "{e}");
    println!("ConvLSTM vs central differences: worst {worst:.1e}");
}

/// A ConvLSTM over 1500 steps: finite, its backward pass the shapes of its inputs and its
/// input gradient nonzero at the last step.
#[test]
fn conv_lstm_long_sequence() {
    let w = vec![
        random(&[2, 1, 8], 91).mapv(|v| (0.5 * v) as f32),
        random(&[2, 2, 8], 92).mapv(|v| (0.5 * v) as f32),
        ArrayD::zeros(IxDyn(&[8])),
    ];
    let cfg = json!({"filters": 2, "kernel_size": 2, "padding": "same"});
    let l = op("ConvLSTM1D", cfg, w);
    let x = random(&[1, 1500, 3, 1], 93);
    let out = l.forward("l", x.view(), None, None).unwrap();
    assert_eq!(out.y.shape(), &[1, 3, 2]);
    assert!(out.y.iter().all(|v| v.is_finite()));
    let (dx, dw) = l
        .backward("l", &out.cache, ArrayD::from_elem(IxDyn(&[1, 3, 2]), 1.0))
        .unwrap();
    assert_eq!(dx.shape(), x.shape());
    assert!(dx.iter().chain(dw.iter().flatten()).all(|v| v.is_finite()));
    assert!(dx
        .slice(ndarray::s![0, 1499, .., ..])
        .iter()
        .any(|&v| v != 0.0));
}

/// Conv2D and the 2-D poolings against central differences: paddings, strides, dilations,
/// activations, no bias, window sizes, keepdims.
#[test]
fn image_ops_match_central_differences() {
    let mut worst = 0.0f64;
    let x = random(&[2, 5, 6, 3], 101);
    let kernel = |kh: usize, kw: usize, f: usize, seed: u64| {
        random(&[kh, kw, 3, f], seed).mapv(|v| (0.5 * v) as f32)
    };
    let bias = |f: usize| random(&[f], 102).mapv(|v| (0.2 * v) as f32);
    for (cfg, w) in [
        (
            json!({"kernel_size": [3, 3], "padding": "same", "activation": "tanh"}),
            vec![kernel(3, 3, 4, 103), bias(4)],
        ),
        (
            json!({"kernel_size": [2, 3], "strides": [2, 1], "activation": "relu"}),
            vec![kernel(2, 3, 2, 104), bias(2)],
        ),
        (
            json!({"kernel_size": [3, 2], "dilation_rate": [2, 1], "padding": "same",
                   "use_bias": false}),
            vec![kernel(3, 2, 3, 105)],
        ),
        (
            json!({"kernel_size": [3, 3], "strides": [2, 2], "padding": "same",
                   "activation": "sigmoid"}),
            vec![kernel(3, 3, 2, 106), bias(2)],
        ),
    ] {
        let e = check(&mut op("Conv2D", cfg.clone(), w), x.clone(), None);
        assert!(e < 1e-8, "Conv2D {cfg}: {e:e}");
        worst = worst.max(e);
    }
    for (class, cfg) in [
        ("MaxPooling2D", json!({"pool_size": [2, 2]})),
        (
            "MaxPooling2D",
            json!({"pool_size": [3, 2], "strides": [2, 2], "padding": "same"}),
        ),
        (
            "AveragePooling2D",
            json!({"pool_size": [3, 3], "strides": [1, 1], "padding": "same"}),
        ),
        (
            "AveragePooling2D",
            json!({"pool_size": [2, 3], "strides": [2, 3]}),
        ),
        ("GlobalAveragePooling2D", json!({})),
        ("GlobalAveragePooling2D", json!({"keepdims": true})),
        ("GlobalMaxPooling2D", json!({})),
        ("GlobalMaxPooling2D", json!({"keepdims": true})),
    ] {
        let e = check(&mut op(class, cfg.clone(), vec![]), x.clone(), None);
        assert!(e < 1e-8, "{class} {cfg}: {e:e}");
        worst = worst.max(e);
    }
    // a maximum's cotangent goes to the first of tied maxima, shared by a global one's
    let flat = ArrayD::from_elem(IxDyn(&[1, 2, 2, 1]), 1.0);
    let d = ArrayD::from_elem(IxDyn(&[1, 1, 1, 1]), 1.0);
    let pool = op("MaxPooling2D", json!({"pool_size": [2, 2]}), vec![]);
    let out = pool.forward("l", flat.view(), None, None).unwrap();
    let (dx, _) = pool.backward("l", &out.cache, d.clone()).unwrap();
    assert_eq!(dx.iter().copied().collect::<Vec<_>>(), [1.0, 0.0, 0.0, 0.0]);
    let global = op("GlobalMaxPooling2D", json!({"keepdims": true}), vec![]);
    let out = global.forward("l", flat.view(), None, None).unwrap();
    let (dx, _) = global.backward("l", &out.cache, d).unwrap();
    assert_eq!(dx.iter().copied().collect::<Vec<_>>(), [0.25; 4]);
    let e = from_keras::<f64>(
        "Conv2D",
        &json!({"kernel_size": [3, 3]}),
        "c2",
        vec![kernel(2, 2, 1, 1)],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("c2/kernel"), "{e}");
    println!("image ops vs central differences: worst {worst:.1e}");
}
