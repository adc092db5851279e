//! Each graph layer's GPU stage against its CPU op (the twin rule): the op's `call` and the
//! stage its `gpu` builds run on the same random inputs and masks, over random shapes and
//! options (odd lengths, strides, dilation, every padding, every mask pattern, NaN/inf), and
//! must agree within 1e-4 on the values and exactly on the masks (a mask dropped or invented
//! fails). The GPU side runs as a model graph in one submission: each input gets its mask
//! from a test stage, and a test stage reads each output's mask back.

use super::activations::{Activate, Leaky, PRelu};
use super::combine::{AnyOp, Dot, GlobalPool, Merge, Norm, NotEqual};
use super::core::{Dense, Embedding, Identity, Masking, Permute, Recurrent, RepeatVector, Reshape};
use super::ops::{Act, Extra, GpuStage, Op};
use super::Value;
use crate::activation::Activation;
use crate::error::Result;
use crate::gpu::plan::{Args, PlanContext, Tensor};
use crate::gpu::{GpuContext, GpuGraph, GpuInput, GpuNetwork, GpuNode, Src, Uploader};
use ndarray::{Array1, Array2, Array3, ArrayD, IxDyn};
use serde_json::json;
use std::sync::{Arc, Mutex};

fn ctx(test: &str) -> Option<Arc<GpuContext>> {
    match GpuContext::with_options(&crate::gpu::GpuOptions::from_env().allow_software(true)) {
        Ok(c) => Some(c),
        Err(e) => {
            if std::env::var("LSTM_WGPU_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: LSTM_WGPU_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            None
        }
    }
}

/// Test stage: input 0 with input 1's values as its mask (1.0 where not 0.0).
#[derive(Debug)]
struct AttachMask;

impl GpuStage for AttachMask {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let mut x = args.inputs[0].clone();
        x.mask = Some(cx.as_mask("test mask", &args.inputs[1])?);
        Ok(vec![x])
    }
}

/// Test stage: the mask of its input as a `[B, T]` tensor (ones when it has none), and
/// whether it had one, recorded at plan time.
#[derive(Debug)]
struct TakeMask(Arc<Mutex<Vec<bool>>>);

impl GpuStage for TakeMask {
    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let x = &args.inputs[0];
        let (b, t) = (x.shape[0], x.shape.get(1).copied().unwrap_or(1));
        self.0.lock().unwrap().push(x.mask.is_some());
        let buf = match &x.mask {
            Some(m) => m.clone(),
            None => cx.ones("no mask", b * t)?,
        };
        Ok(vec![Tensor {
            buf,
            offset: 0,
            shape: vec![b, t],
            mask: None,
        }])
    }
}

/// A deterministic pseudo-random stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn array(&mut self, shape: &[usize]) -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(shape), |_| self.uniform())
    }
    /// A mask `[b, t]` of one of the patterns: all present, all masked, trailing padding,
    /// leading padding, random.
    fn mask(&mut self, b: usize, t: usize) -> Array2<bool> {
        let kind = self.below(5);
        let cut: Vec<usize> = (0..b).map(|_| self.below(t + 1)).collect();
        Array2::from_shape_fn((b, t), |(i, s)| match kind {
            0 => true,
            1 => false,
            2 => s < cut[i],
            3 => s >= cut[i],
            _ => (s * 7 + i * 3) % 3 != 0,
        })
    }
}

fn value(data: ArrayD<f32>, mask: Option<Array2<bool>>) -> Value {
    Value { data, mask }
}

/// Runs `op` on the CPU and its stage on the GPU over `inputs` (and `states`), with the
/// call's scalars and keyword arguments; asserts values within 1e-4 and identical masks.
/// Returns the worst difference.
fn check(
    ctx: &Arc<GpuContext>,
    what: &str,
    op: &mut dyn Op,
    inputs: &[Value],
    states: &[Value],
    scalars: &[f64],
    kwargs: serde_json::Value,
) -> f32 {
    let kwargs = kwargs.as_object().cloned().unwrap_or_default();
    let refs: Vec<&Value> = inputs.iter().collect();
    let extra = Extra {
        states: states.iter().collect(),
        mask: None,
        scalars,
        kwargs: &kwargs,
    };
    let cpu = op
        .call(&refs, &extra)
        .unwrap_or_else(|e| panic!("{what}: cpu: {e}"));

    let mut up = Uploader::new(ctx);
    let stage = op
        .gpu(&mut up)
        .unwrap_or_else(|e| panic!("{what}: gpu stage: {e}"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut stages: Vec<Box<dyn GpuStage>> = vec![
        stage,
        Box::new(AttachMask),
        Box::new(TakeMask(seen.clone())),
    ];
    let _ = &mut stages;
    let mut model_inputs = Vec::new();
    let mut feeds = Vec::new();
    let mut nodes = Vec::new();
    let node = |stage: usize, inputs: Vec<Src>| GpuNode {
        name: what.to_string(),
        stage,
        inputs,
        states: Vec::new(),
        mask: None,
        scalars: Vec::new(),
        kwargs: Default::default(),
    };
    let mut srcs = Vec::new();
    for (k, v) in inputs.iter().chain(states).enumerate() {
        let dims: Vec<Option<usize>> = v.data.shape()[1..].iter().map(|&d| Some(d)).collect();
        model_inputs.push(GpuInput {
            name: format!("x{k}"),
            dims,
            vocabulary: None,
            integer: false,
        });
        feeds.push(v.data.clone());
        let x = Src::Input(model_inputs.len() - 1);
        match &v.mask {
            Some(m) => {
                model_inputs.push(GpuInput {
                    name: format!("m{k}"),
                    dims: vec![Some(m.ncols())],
                    vocabulary: None,
                    integer: false,
                });
                feeds.push(m.mapv(|b| if b { 1.0 } else { 0.0 }).into_dyn());
                nodes.push(node(1, vec![x, Src::Input(model_inputs.len() - 1)]));
                srcs.push(Src::Node(nodes.len() - 1, 0));
            }
            None => srcs.push(x),
        }
    }
    let mut op_node = node(0, srcs[..inputs.len()].to_vec());
    op_node.states = srcs[inputs.len()..].to_vec();
    op_node.scalars = scalars.to_vec();
    op_node.kwargs = kwargs.clone();
    nodes.push(op_node);
    let op_index = nodes.len() - 1;
    let mut outputs = Vec::new();
    for k in 0..cpu.len() {
        outputs.push((op_index, Some(k)));
        nodes.push(node(2, vec![Src::Node(op_index, k)]));
        outputs.push((nodes.len() - 1, Some(0)));
    }
    let bytes = up.bytes;
    let parts = GpuGraph {
        stages,
        nodes,
        inputs: model_inputs,
        output_names: outputs.iter().map(|_| String::new()).collect(),
        outputs,
    };
    let mut net = GpuNetwork::from_parts(ctx.clone(), parts, bytes).unwrap();
    let feeds: Vec<crate::model::ModelInput> = feeds.into_iter().map(Into::into).collect();
    let got = net
        .forward_inputs(&feeds)
        .unwrap_or_else(|e| panic!("{what}: gpu: {e}"));
    assert_eq!(net.stats().submits, 1);
    let had_mask = seen.lock().unwrap().clone();
    let mut worst = 0.0f32;
    for (k, c) in cpu.iter().enumerate() {
        let g = &got[2 * k];
        assert_eq!(g.shape(), c.data.shape(), "{what}: output {k} shape");
        for (a, b) in g.iter().zip(&c.data) {
            let same = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-4;
            assert!(same, "{what}: output {k}: gpu {a} vs cpu {b}");
            if a.is_finite() && b.is_finite() {
                worst = worst.max((a - b).abs());
            }
        }
        assert_eq!(
            had_mask[k],
            c.mask.is_some(),
            "{what}: output {k}: mask present"
        );
        if let Some(m) = &c.mask {
            let gm = got[2 * k + 1].mapv(|v| v != 0.0);
            assert_eq!(
                gm.as_slice().unwrap(),
                m.as_standard_layout().as_slice().unwrap(),
                "{what}: output {k} mask"
            );
        }
    }
    worst
}

/// Sprinkles NaN, inf and -inf into `a` (a few values).
fn poison(a: &mut ArrayD<f32>, rng: &mut Rng) {
    let n = a.len();
    if n == 0 {
        return;
    }
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let k = rng.below(n);
        a.as_slice_mut().unwrap()[k] = v;
    }
}

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
            let mut op = super::conv::build(class, &cfg, class, &|| Ok(Vec::new()))
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
        let mut op = super::core::ExpandDims { axis: -1 };
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
            let mut op = super::core::FillLike { value: value_ };
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
        let inner = super::conv::build("MaxPooling1D", &cfg, "pool", &|| Ok(Vec::new()))
            .unwrap()
            .unwrap();
        let mut op = super::core::TimeDistributed {
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
            };
            check(&ctx, "norm", &mut op, &[v()], &[], &[], json!({}));
        }
    }
}

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
        let mut op = super::conv::build("Conv1D", &cfg, "conv", &w)
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
            let mut op = super::conv::build(class, &cfg, class, &|| Ok(Vec::new()))
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
            let mut op = super::conv::build(class, &cfg, "attention", &w)
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
        };
        check(
            &ctx,
            "dot 2-D",
            &mut op,
            &[value(x2, None), value(y2, None)],
            &[],
            &[],
            json!({}),
        );
        let x1 = Array3::from_shape_fn((b, p, r), |_| rng.uniform()).into_dyn();
        let mut op = Dot {
            name: "dot".into(),
            axes: (2, 1),
            normalize: false,
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
    let mut conv = super::conv::build("Conv1D", &cfg, "conv", &w)
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
    let mut pool = super::conv::build("MaxPooling1D", &cfg, "pool", &|| Ok(Vec::new()))
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
    let mut pad = super::conv::build(
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
    let mut att = super::conv::build("Attention", &json!({"use_scale": false}), "att", &|| {
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
