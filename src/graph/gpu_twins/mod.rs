//! Each graph layer's GPU stage against its CPU op (the twin rule): the op's `call` and the
//! stage its `gpu` builds run on the same random inputs and masks, over random shapes and
//! options (odd lengths, strides, dilation, every padding, every mask pattern, NaN/inf), and
//! must agree within 1e-4 on the values and exactly on the masks (a mask dropped or invented
//! fails). The GPU side runs as a model graph in one submission: each input gets its mask
//! from a test stage, and a test stage reads each output's mask back.

mod images;
mod sequences;
mod shapes;

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
    let stages: Vec<Box<dyn GpuStage>> = vec![
        stage,
        Box::new(AttachMask),
        Box::new(TakeMask(seen.clone())),
    ];
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
