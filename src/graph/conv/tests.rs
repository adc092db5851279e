//! The convolution and pooling formulas by hand.

use super::*;
use ndarray::Array3;
use serde_json::json;

fn value(data: Array3<f32>) -> Value {
    Value {
        data: data.into_dyn(),
        mask: None,
    }
}

fn run(
    op: &mut Box<dyn Op>,
    inputs: &[&Value],
    kwargs: &serde_json::Map<String, Json>,
) -> Vec<Value> {
    let extra = Extra {
        states: Vec::new(),
        mask: None,
        scalars: &[],
        kwargs,
    };
    op.call(inputs, &extra).unwrap()
}

fn conv(cfg: Json, kernel: Array3<f32>, bias: Option<Vec<f32>>) -> Box<dyn Op> {
    let w = move || {
        let mut v = vec![kernel.clone().into_dyn()];
        v.extend(bias.clone().map(|b| Array1::from(b).into_dyn()));
        Ok(v)
    };
    build("Conv1D", &cfg, "conv", &w).unwrap().unwrap()
}

/// x = 1, 2, 3, 4, 5 (one channel), kernel [1, 10] (k = 2): the documented formulas by
/// hand for each padding, stride and dilation.
#[test]
fn conv1d_by_hand() {
    let x = value(Array3::from_shape_vec((1, 5, 1), vec![1., 2., 3., 4., 5.]).unwrap());
    let kernel = Array3::from_shape_vec((2, 1, 1), vec![1., 10.]).unwrap();
    let none = serde_json::Map::new();
    for (padding, stride, dilation, want) in [
        // valid: y[o] = x[o] + 10 x[o+1]
        ("valid", 1, 1, vec![21., 32., 43., 54.]),
        // causal: left pad 1: y[o] = x[o-1] + 10 x[o]
        ("causal", 1, 1, vec![10., 21., 32., 43., 54.]),
        // causal, dilation 2: left pad 2: y[o] = x[o-2] + 10 x[o]
        ("causal", 1, 2, vec![10., 20., 31., 42., 53.]),
        // same, stride 2: out 3, pad total 1 (left 0): y[o] = x[2o] + 10 x[2o+1]
        ("same", 2, 1, vec![21., 43., 5.]),
        // valid, dilation 2: span 3: y[o] = x[o] + 10 x[o+2]
        ("valid", 1, 2, vec![31., 42., 53.]),
    ] {
        let cfg = json!({"padding": padding, "strides": [stride], "dilation_rate": [dilation],
                         "use_bias": true, "activation": "linear"});
        let mut op = conv(cfg, kernel.clone(), Some(vec![0.0]));
        let y = run(&mut op, &[&x], &none).remove(0);
        assert_eq!(
            y.data.iter().copied().collect::<Vec<_>>(),
            want,
            "{padding} {stride} {dilation}"
        );
    }
    // strides > 1 with dilation > 1: refused at build, as Keras refuses it
    let cfg = json!({"padding": "valid", "strides": [2], "dilation_rate": [2]});
    let w = || Ok(vec![ArrayD::zeros(ndarray::IxDyn(&[2, 1, 1]))]);
    let err = build("Conv1D", &cfg, "conv", &w).expect_err("refused");
    assert!(err.to_string().contains("dilation_rate"), "{err}");
    // groups: two channels, two filters, each filter sees its own channel
    let x2 = value(Array3::from_shape_vec((1, 2, 2), vec![1., 100., 2., 200.]).unwrap());
    let k2 = Array3::from_shape_vec((1, 1, 2), vec![1., 2.]).unwrap();
    let cfg = json!({"padding": "valid", "groups": 2, "use_bias": false, "activation": "relu"});
    let mut op = conv(cfg, k2, None);
    let y = run(&mut op, &[&x2], &none).remove(0);
    assert_eq!(
        y.data.iter().copied().collect::<Vec<_>>(),
        vec![1., 200., 2., 400.]
    );
}

/// A 3 x 3 image 1..9, a 2 x 2 kernel [[1, 10], [100, 1000]]: each output pixel by the
/// formula, for valid, same (padding after: bottom and right), strides and dilation;
/// pooling 2-D likewise.
#[test]
fn conv2d_and_pool2d_by_hand() {
    let img = ArrayD::from_shape_vec(
        ndarray::IxDyn(&[1, 3, 3, 1]),
        (1..=9).map(|v| v as f32).collect(),
    )
    .unwrap();
    let x = Value {
        data: img,
        mask: None,
    };
    let none = serde_json::Map::new();
    let kernel =
        ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 2, 1, 1]), vec![1., 10., 100., 1000.]).unwrap();
    // y[i, j] = x[i, j] + 10 x[i, j+1] + 100 x[i+1, j] + 1000 x[i+1, j+1] (0 outside)
    let f = |i: usize, j: usize| {
        let at = |a: usize, b: usize| {
            if a < 3 && b < 3 {
                (a * 3 + b + 1) as f32
            } else {
                0.0
            }
        };
        at(i, j) + 10.0 * at(i, j + 1) + 100.0 * at(i + 1, j) + 1000.0 * at(i + 1, j + 1)
    };
    for (cfg, want) in [
        (
            json!({"kernel_size": [2, 2], "padding": "valid"}),
            vec![f(0, 0), f(0, 1), f(1, 0), f(1, 1)],
        ),
        (
            json!({"kernel_size": [2, 2], "padding": "same"}),
            (0..9).map(|k| f(k / 3, k % 3)).collect(),
        ),
        (
            json!({"kernel_size": [2, 2], "padding": "same", "strides": [2, 2]}),
            vec![f(0, 0), f(0, 2), f(2, 0), f(2, 2)],
        ),
        (
            json!({"kernel_size": 2, "padding": "valid", "strides": [1, 2]}),
            vec![f(0, 0), f(1, 0)],
        ),
    ] {
        let k = kernel.clone();
        let w = move || Ok(vec![k.clone()]);
        let cfg2 = json!({"use_bias": false, "activation": "linear"});
        let mut cfg = cfg;
        cfg.as_object_mut()
            .unwrap()
            .extend(cfg2.as_object().unwrap().clone());
        let mut op = build("Conv2D", &cfg, "c", &w).unwrap().unwrap();
        let y = run(&mut op, &[&x], &none).remove(0);
        assert_eq!(y.data.iter().copied().collect::<Vec<_>>(), want, "{cfg}");
    }
    // dilation (2, 1): y[0, j] = x[0, j] + 10 x[0, j+1] + 100 x[2, j] + 1000 x[2, j+1]
    let k = kernel.clone();
    let w = move || Ok(vec![k.clone()]);
    let cfg = json!({"kernel_size": [2, 2], "dilation_rate": [2, 1], "use_bias": false});
    let mut op = build("Conv2D", &cfg, "c", &w).unwrap().unwrap();
    let y = run(&mut op, &[&x], &none).remove(0);
    assert_eq!(y.data.shape(), &[1, 1, 2, 1]);
    assert_eq!(
        y.data.iter().copied().collect::<Vec<_>>(),
        vec![1. + 20. + 700. + 8000., 2. + 30. + 800. + 9000.]
    );
    // the kernel must have the configured size
    let cfg = json!({"kernel_size": [3, 3]});
    let k = kernel.clone();
    let w = move || Ok(vec![k.clone()]);
    assert!(build("Conv2D", &cfg, "c", &w).is_err());
    let no_weights = || -> Result<Vec<ArrayD<f32>>> { Ok(Vec::new()) };
    for (class, cfg, want) in [
        ("MaxPooling2D", json!({"pool_size": [2, 2]}), vec![5.]),
        (
            "AveragePooling2D",
            json!({"pool_size": [2, 2], "strides": [1, 1]}),
            vec![3., 4., 6., 7.],
        ),
        // same, 2 x 2 windows moved by 2: the edge windows average the pixels present
        (
            "AveragePooling2D",
            json!({"pool_size": [2, 2], "padding": "same"}),
            vec![3., 4.5, 7.5, 9.],
        ),
        (
            "MaxPooling2D",
            json!({"pool_size": [3, 1], "strides": [1, 2]}),
            vec![7., 9.],
        ),
    ] {
        let mut op = build(class, &cfg, "p", &no_weights).unwrap().unwrap();
        let y = run(&mut op, &[&x], &none).remove(0);
        assert_eq!(
            y.data.iter().copied().collect::<Vec<_>>(),
            want,
            "{class} {cfg}"
        );
    }
    // a 2-D layer refuses a 3-D input, naming the layer
    let mut op = build("MaxPooling2D", &json!({}), "pool_a", &no_weights)
        .unwrap()
        .unwrap();
    let x3 = value(Array3::zeros((1, 3, 3)));
    let extra = Extra {
        states: Vec::new(),
        mask: None,
        scalars: &[],
        kwargs: &none,
    };
    let err = op.call(&[&x3], &extra).unwrap_err();
    assert!(err.to_string().contains("pool_a"), "{err}");
}

#[test]
fn pooling_padding_and_upsampling_by_hand() {
    let x = value(Array3::from_shape_vec((1, 5, 1), vec![1., 5., 2., 4., 3.]).unwrap());
    let none = serde_json::Map::new();
    let no_weights = || -> Result<Vec<ArrayD<f32>>> { Ok(Vec::new()) };
    for (class, cfg, want) in [
        ("MaxPooling1D", json!({"pool_size": [2]}), vec![5., 4.]),
        ("AveragePooling1D", json!({"pool_size": [2]}), vec![3., 3.]),
        // same: out 3, pad right 1; the last window averages its one real value
        (
            "AveragePooling1D",
            json!({"pool_size": [2], "padding": "same"}),
            vec![3., 3., 3.],
        ),
        (
            "MaxPooling1D",
            json!({"pool_size": [3], "strides": [1]}),
            vec![5., 5., 4.],
        ),
        (
            "ZeroPadding1D",
            json!({"padding": [1, 2]}),
            vec![0., 1., 5., 2., 4., 3., 0., 0.],
        ),
        ("Cropping1D", json!({"cropping": [1, 2]}), vec![5., 2.]),
        (
            "UpSampling1D",
            json!({"size": 2}),
            vec![1., 1., 5., 5., 2., 2., 4., 4., 3., 3.],
        ),
    ] {
        let mut op = build(class, &cfg, "p", &no_weights).unwrap().unwrap();
        let y = run(&mut op, &[&x], &none).remove(0);
        assert_eq!(
            y.data.iter().copied().collect::<Vec<_>>(),
            want,
            "{class} {cfg}"
        );
    }
}

/// One query, two values: scores by the documented formulas, the value mask, the query
/// mask and the causal mask.
#[test]
fn attention_by_hand() {
    let q = value(Array3::from_shape_vec((1, 1, 2), vec![1., 0.]).unwrap());
    let mut v = value(Array3::from_shape_vec((1, 2, 2), vec![2., 0., 0., 4.]).unwrap());
    let none = serde_json::Map::new();
    // dot scores [2, 0] scaled by 0.5: [1, 0]; softmax; output = w0 [2, 0] + w1 [0, 4]
    let scale =
        || -> Result<Vec<ArrayD<f32>>> { Ok(vec![ArrayD::from_elem(ndarray::IxDyn(&[]), 0.5)]) };
    let mut op = build("Attention", &json!({"use_scale": true}), "att", &scale)
        .unwrap()
        .unwrap();
    let (w0, w1) = (1f32.exp() / (1f32.exp() + 1.0), 1.0 / (1f32.exp() + 1.0));
    let y = run(&mut op, &[&q, &v], &none).remove(0);
    let got: Vec<f32> = y.data.iter().copied().collect();
    assert!(
        (got[0] - 2.0 * w0).abs() < 1e-6 && (got[1] - 4.0 * w1).abs() < 1e-6,
        "{got:?}"
    );
    // the value mask drops value 1
    v.mask = Some(ndarray::arr2(&[[true, false]]));
    let y = run(&mut op, &[&q, &v], &none).remove(0);
    assert_eq!(y.data.iter().copied().collect::<Vec<_>>(), vec![2., 0.]);
    // additive: scores sum(scale * tanh(q + k)), scale [1, 1]
    let s2 =
        || -> Result<Vec<ArrayD<f32>>> { Ok(vec![ArrayD::from_elem(ndarray::IxDyn(&[2]), 1.0)]) };
    let mut add = build("AdditiveAttention", &json!({"use_scale": true}), "add", &s2)
        .unwrap()
        .unwrap();
    v.mask = None;
    let (s0, s1) = ((3f32).tanh() + 0f32.tanh(), 1f32.tanh() + 4f32.tanh());
    let (a0, a1) = (
        s0.exp() / (s0.exp() + s1.exp()),
        s1.exp() / (s0.exp() + s1.exp()),
    );
    let y = run(&mut add, &[&q, &v], &none).remove(0);
    let got: Vec<f32> = y.data.iter().copied().collect();
    assert!(
        (got[0] - 2.0 * a0).abs() < 1e-6 && (got[1] - 4.0 * a1).abs() < 1e-6,
        "{got:?}"
    );
    // causal: query step 0 sees value step 0 only; scores come back when asked
    let mut kw = serde_json::Map::new();
    kw.insert("use_causal_mask".into(), json!(true));
    kw.insert("return_attention_scores".into(), json!(true));
    let out = run(&mut op, &[&q, &v], &kw);
    assert_eq!(
        out[0].data.iter().copied().collect::<Vec<_>>(),
        vec![2., 0.]
    );
    assert_eq!(out[1].data.shape(), &[1, 1, 2]);
}
