//! ONNX's own LSTM, GRU and RNN operator test cases (recorded from the `onnx` package's
//! backend suite), plus cases computed by onnxruntime for what that suite lacks (GRU with
//! `linear_before_reset=1`, `sequence_lens`, initial states, other activations), replayed
//! through `lstm_wgpu::onnx` on the CPU and the GPU: every node the crate accepts must give
//! the operator's outputs; a node it refuses (peepholes) must say why.
//! Recorded by `scripts/record_onnx_cases.py` into `tests/data/onnx/`.

use lstm_wgpu::gpu::GpuNetwork;
use lstm_wgpu::onnx::{OnnxAttributes, OnnxNode, OnnxOp};
use lstm_wgpu::Network;
use ndarray::{Array1, Array2, Array3, ArrayD, IxDyn};
use serde_json::Value;

mod common;

fn tensor(v: &Value) -> ArrayD<f32> {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data: Vec<f32> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_f64().unwrap() as f32)
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap()
}

fn max_abs(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

struct Loaded {
    name: String,
    node: OnnxNode<f32>,
    x: Array3<f32>,
    mask: Option<Array2<bool>>,
    init: Option<Vec<Array2<f32>>>,
    expected: Vec<(String, ArrayD<f32>)>,
}

fn load(path: &std::path::Path) -> Loaded {
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let name = v["name"].as_str().unwrap().to_string();
    let inputs = &v["inputs"];
    let get = |k: &str| inputs.get(k).map(tensor);
    let node = OnnxNode {
        op: OnnxOp::from_op_type(v["op_type"].as_str().unwrap()).unwrap(),
        attributes: OnnxAttributes::from_json(&v["attributes"]).unwrap(),
        w: get("W").unwrap().into_dimensionality().unwrap(),
        r: get("R").unwrap().into_dimensionality().unwrap(),
        b: get("B").map(|b| b.into_dimensionality().unwrap()),
        p: get("P").map(|p| p.into_dimensionality().unwrap()),
    };
    let x3: Array3<f32> = get("X").unwrap().into_dimensionality().unwrap();
    let x = node.input(x3.view());
    let steps = x.dim().1;
    let mask = get("sequence_lens").map(|l| {
        let lens: Array1<i64> = l.iter().map(|&v| v as i64).collect();
        node.mask(lens.view(), steps).unwrap()
    });
    let h0: Option<Array3<f32>> = get("initial_h").map(|a| a.into_dimensionality().unwrap());
    let c0: Option<Array3<f32>> = get("initial_c").map(|a| a.into_dimensionality().unwrap());
    let init = node
        .initial_state(h0.as_ref().map(|a| a.view()), c0.as_ref().map(|a| a.view()))
        .unwrap();
    let expected = ["Y", "Y_h", "Y_c"]
        .iter()
        .filter_map(|k| v["outputs"].get(*k).map(|t| (k.to_string(), tensor(t))))
        .collect();
    Loaded {
        name,
        node,
        x,
        mask,
        init,
        expected,
    }
}

/// Runs `net` (CPU, or GPU when `gpu`) and compares with the case's outputs.
fn check(case: &Loaded, outputs: Vec<ArrayD<f32>>, path: &str) -> f32 {
    let (y, y_h, y_c) = case.node.outputs(outputs).unwrap();
    let mut worst = 0.0f32;
    for (k, want) in &case.expected {
        let got = match k.as_str() {
            "Y" => &y,
            "Y_h" => &y_h,
            _ => y_c.as_ref().expect("an LSTM has Y_c"),
        };
        let err = max_abs(got, want);
        assert!(
            err <= 1e-5 || (path == "gpu" && err <= 1e-4),
            "{} {path} {k}: {err:e}",
            case.name
        );
        worst = worst.max(err);
    }
    worst
}

#[test]
fn onnx_operator_cases_run_or_are_refused_by_name() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 24,
        "{} cases in {}",
        files.len(),
        dir.display()
    );
    let ctx = common::gpu("onnx_operator_cases_run_or_are_refused_by_name");
    let (mut ran, mut refused) = (0, 0);
    for f in &files {
        let case = load(f);
        let mut net: Network<f32> = match case.node.network() {
            Ok(n) => n,
            Err(e) => {
                // ONNX's peephole case: refused, naming the peepholes.
                assert!(
                    case.name.contains("peephole") && e.to_string().contains("P (peepholes"),
                    "{}: {e}",
                    case.name
                );
                refused += 1;
                continue;
            }
        };
        let init: Option<Vec<_>> = case
            .init
            .as_ref()
            .map(|v| v.iter().map(|a| a.view()).collect());
        let mask = case.mask.as_ref().map(|m| m.view());
        let cpu = net.forward(case.x.view(), init.as_deref(), mask).unwrap();
        check(&case, cpu, "cpu");
        if let Some(ctx) = &ctx {
            let mut g = GpuNetwork::new(ctx.clone(), &net).unwrap();
            let out = g.forward(case.x.view(), init.as_deref(), mask).unwrap();
            check(&case, out, "gpu");
        }
        ran += 1;
    }
    assert_eq!((ran, refused), (files.len() - 1, 1));
}

#[test]
fn unknown_and_unsupported_attributes_are_named() {
    let e = OnnxAttributes::from_json(&serde_json::json!({"hidden_size": 3, "peephole": 1}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("peephole"), "{e}");
    let base = |op, g: usize| OnnxNode::<f32> {
        op,
        attributes: OnnxAttributes {
            hidden_size: 2,
            ..Default::default()
        },
        w: Array3::zeros((1, g * 2, 3)),
        r: Array3::zeros((1, g * 2, 2)),
        b: None,
        p: None,
    };
    let mut n = base(OnnxOp::Lstm, 4);
    n.attributes.input_forget = 1;
    n.attributes.activations = vec!["Sigmoid".into(), "Tanh".into(), "Relu".into()];
    let e = n.network().unwrap_err().to_string();
    assert!(
        e.contains("input_forget") && e.contains("g = Tanh and h = Relu"),
        "{e}"
    );
    let mut n = base(OnnxOp::Rnn, 1);
    n.attributes.activations = vec!["LeakyRelu".into()];
    n.attributes.activation_alpha = vec![0.1];
    let e = n.network().unwrap_err().to_string();
    assert!(e.contains("LeakyRelu"), "{e}");
    // Zero peepholes are a plain LSTM.
    let mut n = base(OnnxOp::Lstm, 4);
    n.p = Some(Array2::zeros((1, 6)));
    assert!(n.network().is_ok());
    // Shapes are checked.
    let mut n = base(OnnxOp::Gru, 3);
    n.r = Array3::zeros((1, 6, 3));
    let e = n.network().unwrap_err().to_string();
    assert!(e.contains('R'), "{e}");
}
