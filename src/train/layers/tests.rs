//! The layers' tests: every op's and merge's backward pass against central differences,
//! masks, options and errors, BatchNormalization's axis forms, long sequences.

use super::{from_keras, TrainOp};
use ndarray::{Array2, ArrayD, IxDyn};
use serde_json::json;

/// A xorshift stream in [-1, 1).
fn stream(mut seed: u64) -> impl FnMut() -> f64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// `sum(op(x) · r)` against central differences of every input value and weight.
pub(super) fn check(
    op: &mut Box<dyn TrainOp<f64>>,
    x: ArrayD<f64>,
    mask: Option<Array2<bool>>,
) -> f64 {
    check_in(op, x, mask, false)
}

/// [`check`] in training mode or not.
fn check_in(
    op: &mut Box<dyn TrainOp<f64>>,
    x: ArrayD<f64>,
    mask: Option<Array2<bool>>,
    training: bool,
) -> f64 {
    let mut next = stream(x.len() as u64 * 7919 + 1);
    let out = op
        .forward("l", x.view(), mask.as_ref(), training.then_some(1))
        .unwrap();
    let r = ArrayD::from_shape_fn(out.y.raw_dim(), |_| next());
    let (dx, dw) = op.backward("l", &out.cache, r.clone()).unwrap();
    assert_eq!(dx.shape(), x.shape());
    let loss = |op: &dyn TrainOp<f64>, x: &ArrayD<f64>| {
        let y = op
            .forward("l", x.view(), mask.as_ref(), training.then_some(1))
            .unwrap()
            .y;
        (&y * &r).sum()
    };
    let eps = 1e-6;
    let mut worst = 0.0f64;
    for e in 0..x.len() {
        let mut xp = x.clone();
        xp.as_slice_mut().unwrap()[e] += eps;
        let mut xm = x.clone();
        xm.as_slice_mut().unwrap()[e] -= eps;
        let fd = (loss(op.as_ref(), &xp) - loss(op.as_ref(), &xm)) / (2.0 * eps);
        worst = worst.max((fd - dx.as_slice().unwrap()[e]).abs());
    }
    let w0 = op.weights();
    assert_eq!(w0.len(), dw.len());
    for (k, w) in w0.iter().enumerate() {
        assert_eq!(w.shape(), dw[k].shape());
        for e in 0..w.len() {
            let at = |d: f64| {
                let mut o = op.clone();
                o.weights_mut()[k].as_slice_mut().unwrap()[e] += d;
                loss(o.as_ref(), &x)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            worst = worst.max((fd - dw[k].as_slice().unwrap()[e]).abs());
        }
    }
    worst
}

pub(super) fn op(
    class: &str,
    cfg: serde_json::Value,
    w: Vec<ArrayD<f32>>,
) -> Box<dyn TrainOp<f64>> {
    from_keras::<f64>(class, &cfg, "l", w).unwrap().unwrap()
}

pub(super) fn random(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let mut next = stream(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| next())
}

/// Every op's backward pass against central differences, over paddings, strides,
/// dilations, window sizes, masks (a fully masked row included) and flags.
#[test]
fn ops_match_central_differences() {
    let mut worst = 0.0f64;
    let mut mask = Array2::from_elem((3, 7), true);
    mask[[0, 6]] = false;
    mask[[1, 0]] = false;
    mask[[1, 3]] = false;
    let x = random(&[3, 7, 4], 3);
    for (class, cfg) in [
        ("GlobalAveragePooling1D", json!({})),
        ("GlobalAveragePooling1D", json!({"keepdims": true})),
        ("GlobalMaxPooling1D", json!({})),
        ("MaxPooling1D", json!({"pool_size": 2})),
        (
            "MaxPooling1D",
            json!({"pool_size": 3, "strides": 2, "padding": "same"}),
        ),
        (
            "AveragePooling1D",
            json!({"pool_size": 3, "strides": 1, "padding": "same"}),
        ),
        ("AveragePooling1D", json!({"pool_size": 2, "strides": 3})),
        ("Flatten", json!({})),
        ("Reshape", json!({"target_shape": [2, -1]})),
        ("Permute", json!({"dims": [2, 1]})),
        ("Activation", json!({"activation": "softmax"})),
        ("Activation", json!({"activation": "tanh"})),
    ] {
        for m in [None, Some(mask.clone())] {
            let e = check(&mut op(class, cfg.clone(), vec![]), x.clone(), m);
            assert!(e < 1e-8, "{class} {cfg}: {e:e}");
            worst = worst.max(e);
        }
    }
    let e = check(
        &mut op("RepeatVector", json!({"n": 4}), vec![]),
        random(&[2, 5], 5),
        None,
    );
    worst = worst.max(e);
    for (cfg, k, cin, f) in [
        (json!({"padding": "valid", "kernel_size": 3}), 3, 4, 5),
        (
            json!({"padding": "same", "kernel_size": 4, "strides": 2}),
            4,
            4,
            2,
        ),
        (
            json!({"padding": "causal", "kernel_size": 2, "dilation_rate": 3}),
            2,
            4,
            3,
        ),
        (
            json!({"padding": "same", "kernel_size": 1, "use_bias": false, "activation": "relu"}),
            1,
            4,
            3,
        ),
    ] {
        let mut w = vec![random(&[k, cin, f], 11).mapv(|v| v as f32)];
        if cfg.get("use_bias") != Some(&json!(false)) {
            w.push(random(&[f], 13).mapv(|v| v as f32));
        }
        let e = check(&mut op("Conv1D", cfg.clone(), w), x.clone(), None);
        assert!(e < 1e-8, "Conv1D {cfg}: {e:e}");
        worst = worst.max(e);
    }
    for cfg in [
        json!({}),
        json!({"center": false, "epsilon": 0.1}),
        json!({"scale": false}),
    ] {
        let mut w = Vec::new();
        if cfg.get("scale") != Some(&json!(false)) {
            w.push(random(&[4], 17).mapv(|v| v as f32));
        }
        if cfg.get("center") != Some(&json!(false)) {
            w.push(random(&[4], 19).mapv(|v| v as f32));
        }
        let e = check(
            &mut op("LayerNormalization", cfg.clone(), w),
            x.clone(),
            Some(mask.clone()),
        );
        assert!(e < 1e-8, "LayerNormalization {cfg}: {e:e}");
        worst = worst.max(e);
    }
    // the noise layers in training mode (their draws fixed by the seed)
    for (class, cfg) in [
        ("GaussianNoise", json!({"stddev": 0.4})),
        ("GaussianDropout", json!({"rate": 0.3})),
        ("AlphaDropout", json!({"rate": 0.3})),
    ] {
        let e = check_in(
            &mut op(class, cfg, vec![]),
            x.clone(),
            Some(mask.clone()),
            true,
        );
        assert!(e < 1e-8, "{class}: {e:e}");
        worst = worst.max(e);
    }
    // BatchNormalization in both modes, masked (its masked moments) and not, 2-D and 3-D
    for cfg in [json!({}), json!({"center": false}), json!({"scale": false})] {
        let mut w = Vec::new();
        if cfg.get("scale") != Some(&json!(false)) {
            w.push(random(&[4], 37).mapv(|v| v as f32));
        }
        if cfg.get("center") != Some(&json!(false)) {
            w.push(random(&[4], 41).mapv(|v| v as f32));
        }
        w.push(random(&[4], 43).mapv(|v| v as f32));
        w.push(random(&[4], 47).mapv(|v| 1.0 + v.abs() as f32));
        for training in [false, true] {
            for (xx, m) in [
                (x.clone(), None),
                (x.clone(), Some(mask.clone())),
                (random(&[5, 4], 53), None),
            ] {
                let mut bn = op("BatchNormalization", cfg.clone(), w.clone());
                let e = check_in(&mut bn, xx, m, training);
                assert!(e < 1e-8, "BatchNormalization {cfg} {training}: {e:e}");
                worst = worst.max(e);
            }
        }
    }
    println!("ops vs central differences: worst {worst:.1e}");
}

/// Masks as Keras passes them on: kept by LayerNormalization and Activation, dropped by
/// the poolings, Conv1D, RepeatVector and Flatten; a fully masked row averages to NaN,
/// as Keras's `0 / 0`; unknown options and classes are named.
#[test]
fn masks_options_and_errors() {
    let x = random(&[2, 5, 3], 23);
    let mut mask = Array2::from_elem((2, 5), true);
    mask.row_mut(1).fill(false);
    let keeps = |class: &str, cfg: serde_json::Value, w: Vec<ArrayD<f32>>| {
        op(class, cfg, w)
            .forward("l", x.view(), Some(&mask), None)
            .unwrap()
            .mask
            .is_some()
    };
    assert!(keeps("Activation", json!({"activation": "relu"}), vec![]));
    assert!(keeps(
        "LayerNormalization",
        json!({"center": false, "scale": false}),
        vec![]
    ));
    assert!(!keeps("MaxPooling1D", json!({}), vec![]));
    assert!(!keeps("Flatten", json!({}), vec![]));
    let avg = op("GlobalAveragePooling1D", json!({}), vec![])
        .forward("l", x.view(), Some(&mask), None)
        .unwrap()
        .y;
    let avg = avg.into_dimensionality::<ndarray::Ix2>().unwrap();
    assert!(avg.row(0).iter().all(|v| v.is_finite()));
    assert!(avg.row(1).iter().all(|v| v.is_nan()));
    for (class, cfg, key) in [
        ("Conv1D", json!({"kernel_size": 2, "groups": 3}), "groups"),
        (
            "MaxPooling1D",
            json!({"data_format": "channels_first"}),
            "data_format",
        ),
        (
            "LayerNormalization",
            json!({"rms_scaling": true}),
            "rms_scaling",
        ),
        (
            "Conv1D",
            json!({"kernel_size": 2, "padding": "full"}),
            "padding",
        ),
    ] {
        let e = from_keras::<f64>(class, &cfg, "conv", vec![]).unwrap_err();
        assert!(e.to_string().contains(key), "{class}: {e}");
    }
    let e = from_keras::<f64>("Conv1D", &json!({"kernel_size": 2}), "conv", vec![]).unwrap_err();
    assert!(e.to_string().contains("conv/kernel"), "{e}");
    // (Conv2D trains now: without its weights it names the missing kernel)
    let e = from_keras::<f64>("Conv2D", &json!({"kernel_size": [2, 2]}), "c", vec![])
        .unwrap_err()
        .to_string();
    assert!(e.contains("c/kernel"), "{e}");
    assert!(from_keras::<f64>("Conv3D", &json!({}), "c", vec![])
        .unwrap()
        .is_none());
    let ln = op(
        "LayerNormalization",
        json!({"axis": 1}),
        vec![
            ndarray::ArrayD::ones(vec![3]),
            ndarray::ArrayD::zeros(vec![3]),
        ],
    );
    let Err(e) = ln.forward("ln", x.view(), None, None) else {
        panic!("axis 1 of a rank-3 input accepted");
    };
    assert!(e.to_string().contains("axis"), "{e}");
}

/// BatchNormalization's axis as Keras 2 writes it (`[2]` for a 3-D input) is the last
/// axis; another is refused at the call, naming it.
#[test]
fn batch_norm_axis_forms() {
    let w = || {
        vec![
            ndarray::ArrayD::ones(vec![3]),
            ndarray::ArrayD::zeros(vec![3]),
            ndarray::ArrayD::zeros(vec![3]),
            ndarray::ArrayD::ones(vec![3]),
        ]
    };
    let x = random(&[2, 5, 3], 59);
    for axis in [json!(-1), json!([2]), json!(2)] {
        let bn = op("BatchNormalization", json!({"axis": axis}), w());
        assert!(bn.forward("bn", x.view(), None, Some(1)).is_ok(), "{axis}");
    }
    let bn = op("BatchNormalization", json!({"axis": 1}), w());
    let Err(e) = bn.forward("bn", x.view(), None, None) else {
        panic!("axis 1 of a rank-3 input accepted");
    };
    assert!(e.to_string().contains("axis"), "{e}");
}

/// Thousands of steps through every op (memory and index arithmetic at length).
#[test]
fn long_sequences() {
    let t = 3000;
    let x = random(&[2, t, 3], 29);
    let conv = op(
        "Conv1D",
        json!({"kernel_size": 5, "padding": "causal", "dilation_rate": 4}),
        vec![
            random(&[5, 3, 2], 31).mapv(|v| v as f32),
            ndarray::ArrayD::zeros(vec![2]),
        ],
    );
    let out = conv.forward("c", x.view(), None, None).unwrap();
    assert_eq!(out.y.shape(), &[2, t, 2]);
    let (dx, _) = conv.backward("c", &out.cache, out.y.clone()).unwrap();
    assert!(dx.iter().all(|v| v.is_finite()));
    for (class, cfg) in [
        ("MaxPooling1D", json!({"pool_size": 3, "padding": "same"})),
        ("GlobalAveragePooling1D", json!({})),
        ("GlobalMaxPooling1D", json!({})),
    ] {
        let p = op(class, cfg, vec![]);
        let out = p.forward("p", x.view(), None, None).unwrap();
        let (dx, _) = p.backward("p", &out.cache, out.y.clone()).unwrap();
        assert_eq!(dx.shape(), x.shape(), "{class}");
    }
}

/// `Σ_k sum(out_k · r_k)` over a merge's outputs against central differences of every
/// input value and weight.
fn check_merge(
    op: &dyn super::MergeOp<f64>,
    xs: &[ArrayD<f64>],
    masks: &[Option<Array2<bool>>],
) -> f64 {
    check_merge_in(op, xs, masks, None)
}

/// [`check_merge`] in training mode with `seed` (the same masks drawn in every call).
fn check_merge_in(
    op: &dyn super::MergeOp<f64>,
    xs: &[ArrayD<f64>],
    masks: &[Option<Array2<bool>>],
    seed: Option<u64>,
) -> f64 {
    let mut next = stream(xs.iter().map(|x| x.len() as u64).sum::<u64>() * 31 + 5);
    let mref: Vec<Option<&Array2<bool>>> = masks.iter().map(Option::as_ref).collect();
    let run = |op: &dyn super::MergeOp<f64>, xs: &[ArrayD<f64>]| {
        let v: Vec<_> = xs.iter().map(|x| x.view()).collect();
        op.forward_in_training("m", &v, &mref, &[], seed).unwrap()
    };
    let out = run(op, xs);
    let r: Vec<ArrayD<f64>> = std::iter::once(&out.y)
        .chain(&out.extra)
        .map(|y| ArrayD::from_shape_fn(y.raw_dim(), |_| next()))
        .collect();
    let d_extra = r[1..].iter().cloned().map(Some).collect();
    let (dxs, dw) = op
        .backward_extra("m", &out.cache, r[0].clone(), d_extra)
        .unwrap();
    let loss = |op: &dyn super::MergeOp<f64>, xs: &[ArrayD<f64>]| {
        let o = run(op, xs);
        std::iter::once(&o.y)
            .chain(&o.extra)
            .zip(&r)
            .map(|(y, r)| (y * r).sum())
            .sum::<f64>()
    };
    let eps = 1e-6;
    let mut worst = 0.0f64;
    for (i, x) in xs.iter().enumerate() {
        let dx = dxs[i].clone().unwrap_or_else(|| ArrayD::zeros(x.raw_dim()));
        assert_eq!(dx.shape(), x.shape(), "{} input {i}", op.class());
        for e in 0..x.len() {
            let at = |d: f64| {
                let mut v = xs.to_vec();
                v[i].as_slice_mut().unwrap()[e] += d;
                loss(op, &v)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            worst = worst.max((fd - dx.as_slice().unwrap()[e]).abs());
        }
    }
    let w0 = op.weights();
    assert_eq!(w0.len(), dw.len(), "{}", op.class());
    for (k, w) in w0.iter().enumerate() {
        assert_eq!(w.shape(), dw[k].shape());
        for e in 0..w.len() {
            let at = |d: f64| {
                let mut o = op.clone_box();
                o.weights_mut()[k].as_slice_mut().unwrap()[e] += d;
                loss(o.as_ref(), xs)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            worst = worst.max((fd - dw[k].as_slice().unwrap()[e]).abs());
        }
    }
    worst
}

/// Every merge's and attention layer's backward pass (broadcasting shapes, masks with a
/// fully masked row, causal masks, returned scores, every score mode) against central
/// differences.
#[test]
fn merges_and_attention_match_central_differences() {
    use super::merge_from_keras;
    let merge = |class: &str, cfg: serde_json::Value, kw: serde_json::Value, w| {
        let kw = kw.as_object().cloned().unwrap_or_default();
        merge_from_keras::<f64>(class, &cfg, "m", &kw, w)
            .unwrap()
            .unwrap()
    };
    let mut worst = 0.0f64;
    // (each case past 1e-7, named)
    let mut past = Vec::new();
    let mut see = |what: String, e: f64| {
        if e >= 1e-7 {
            past.push(format!("{what}: {e:.1e}"));
        }
        worst = worst.max(e);
    };
    // (seeds far apart in their bits: a xorshift stream from a small seed starts near
    // -1 for a few draws, and near-ties between Maximum's operands would be within eps)
    let seed = |k: u64| 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(k + 1);
    let (a, b, c) = (
        random(&[3, 5, 4], seed(11)),
        random(&[3, 5, 4], seed(12)),
        random(&[3, 5, 4], seed(13)),
    );
    let narrow = random(&[3, 1, 4], seed(14));
    for class in [
        "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    ] {
        let m = merge(class, json!({}), json!({}), vec![]);
        let three = if class == "Subtract" {
            vec![a.clone(), b.clone()]
        } else {
            vec![a.clone(), b.clone(), c.clone()]
        };
        let n = three.len();
        see(
            class.into(),
            check_merge(m.as_ref(), &three, &vec![None; n]),
        );
        // (a [B, 1, C] input broadcast along time)
        let e = check_merge(m.as_ref(), &[a.clone(), narrow.clone()], &[None, None]);
        see(format!("{class} broadcast"), e);
    }
    for axis in [-1, 1, 2] {
        let m = merge("Concatenate", json!({ "axis": axis }), json!({}), vec![]);
        let other = if axis == 1 {
            random(&[3, 2, 4], seed(15))
        } else {
            random(&[3, 5, 3], seed(15))
        };
        let e = check_merge(m.as_ref(), &[a.clone(), other], &[None, None]);
        see(format!("Concatenate axis {axis}"), e);
    }
    for axis in [1, -1] {
        let m = merge("ExpandDims", json!({ "axis": axis }), json!({}), vec![]);
        see(
            format!("ExpandDims axis {axis}"),
            check_merge(m.as_ref(), std::slice::from_ref(&a), &[None]),
        );
    }
    // Dot: Luong scores ([2, 2]), their context ([2, 1]), rank 2, rank 4, normalized
    let scores = random(&[3, 5, 6], seed(18));
    let seq6 = random(&[3, 6, 4], seed(19));
    for (axes, x, y) in [
        (json!([2, 2]), a.clone(), seq6.clone()),
        (json!([2, 1]), scores.clone(), seq6.clone()),
        (json!(-1), a.clone(), b.clone()),
        (
            json!(1),
            random(&[3, 4], seed(20)),
            random(&[3, 4], seed(21)),
        ),
        (
            json!([1, 3]),
            random(&[3, 4, 2, 3], seed(22)),
            random(&[3, 2, 5, 4], seed(23)),
        ),
    ] {
        for (normalize, keras2) in [(false, false), (true, false), (true, true)] {
            let m = merge(
                "Dot",
                json!({"axes": axes, "normalize": normalize, "keras2_normalize": keras2}),
                json!({}),
                vec![],
            );
            see(
                format!("Dot axes {axes} normalize {normalize} keras2 {keras2}"),
                check_merge(m.as_ref(), &[x.clone(), y.clone()], &[None, None]),
            );
        }
    }
    // attention: query [3, 5, 4], value [3, 6, 4], key [3, 6, 4]
    let (q, v, k) = (
        a.clone(),
        random(&[3, 6, 4], seed(16)),
        random(&[3, 6, 4], seed(17)),
    );
    let mut qm = Array2::from_elem((3, 5), true);
    qm[[0, 4]] = false;
    qm[[2, 0]] = false;
    let mut vm = Array2::from_elem((3, 6), true);
    vm[[0, 5]] = false;
    vm[[1, 1]] = false;
    // (no query that sees only masked values, causal masks included: Keras subtracts
    // 1e9 from each of its scores, and the rounding of `s - 1e9` (ulp 1.2e-7) is a step
    // central differences see)
    vm.slice_mut(ndarray::s![2, 3..]).fill(false);
    let scalar = |v: f32| ndarray::arr0(v).into_dyn();
    // (MultiHeadAttention: 2 heads, key_dim 3, value_dim 2, output 5; with biases and
    // without)
    let mha_weights = |bias: bool, at: u64| {
        let mut w = Vec::new();
        for (k, (kernel, b)) in [
            (vec![4, 2, 3], vec![2, 3]),
            (vec![4, 2, 3], vec![2, 3]),
            (vec![4, 2, 2], vec![2, 2]),
            (vec![2, 2, 5], vec![5]),
        ]
        .into_iter()
        .enumerate()
        {
            w.push(random(&kernel, seed(at + 2 * k as u64)).mapv(|v| v as f32));
            if bias {
                w.push(random(&b, seed(at + 2 * k as u64 + 1)).mapv(|v| v as f32));
            }
        }
        w
    };
    for (class, cfg, weights) in [
        ("Attention", json!({}), vec![]),
        ("Attention", json!({"use_scale": true}), vec![scalar(0.7)]),
        (
            "Attention",
            json!({"use_scale": true, "score_mode": "concat"}),
            vec![scalar(0.7), scalar(1.3)],
        ),
        ("AdditiveAttention", json!({"use_scale": false}), vec![]),
        (
            "AdditiveAttention",
            json!({}),
            vec![ndarray::arr1(&[0.5f32, -1.0, 0.25, 2.0]).into_dyn()],
        ),
        (
            "MultiHeadAttention",
            json!({"num_heads": 2, "key_dim": 3, "value_dim": 2}),
            mha_weights(true, 40),
        ),
        (
            "MultiHeadAttention",
            json!({"num_heads": 2, "key_dim": 3, "value_dim": 2, "use_bias": false}),
            mha_weights(false, 40),
        ),
        // (attention dropout in training mode: the masks of seed 11 in every call)
        ("Attention", json!({"dropout": 0.4}), vec![]),
        (
            "AdditiveAttention",
            json!({"dropout": 0.3, "use_scale": false}),
            vec![],
        ),
        (
            "MultiHeadAttention",
            json!({"num_heads": 2, "key_dim": 3, "value_dim": 2, "dropout": 0.3}),
            mha_weights(true, 40),
        ),
    ] {
        let seed = cfg.get("dropout").map(|_| 11);
        for kw in [
            json!({}),
            json!({"return_attention_scores": true}),
            json!({"use_causal_mask": true}),
            json!({"use_causal_mask": true, "return_attention_scores": true}),
        ] {
            for masks in [
                [None, None],
                [Some(qm.clone()), None],
                [None, Some(vm.clone())],
                [Some(qm.clone()), Some(vm.clone())],
            ] {
                let m = merge(class, cfg.clone(), kw.clone(), weights.clone());
                for xs in [
                    vec![q.clone(), v.clone()],
                    vec![q.clone(), v.clone(), k.clone()],
                ] {
                    let e = check_merge_in(m.as_ref(), &xs, &masks, seed);
                    let which = (masks[0].is_some(), masks[1].is_some(), xs.len());
                    see(format!("{class} {cfg} {kw} (masks, inputs) {which:?}"), e);
                }
            }
        }
    }
    assert!(past.is_empty(), "{}", past.join("; "));
    println!("merges and attention vs central differences: worst {worst:.1e}");
}
