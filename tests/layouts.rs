//! PyTorch and ONNX weight layouts: every golden case whose LSTMs use PyTorch's/ONNX's
//! activations (tanh, sigmoid) is converted to each layout and back and must still reproduce
//! the recorded Keras outputs.

use lstm_wgpu::golden::{case_files, check_case, cpu_tolerance, Case};
use lstm_wgpu::{LstmWeights, Network};
use ndarray::ArrayD;

mod common;

fn cases() -> Vec<Case> {
    let dir = common::lstm_cases_dir();
    case_files(&dir)
        .unwrap()
        .iter()
        .map(|f| Case::load(f).unwrap())
        .collect()
}

/// Rebuilds the case's weight list, passing every LSTM's weights through `convert`.
fn converted(
    case: &Case,
    convert: &dyn Fn(&lstm_wgpu::LstmConfig, &LstmWeights<f64>) -> LstmWeights<f64>,
) -> Option<Vec<ArrayD<f64>>> {
    let config = case.layer_config().unwrap();
    let list = case.weight_arrays::<f64>().unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    for c in config.lstms() {
        if c.activation != lstm_wgpu::Activation::Tanh
            || c.recurrent_activation != lstm_wgpu::Activation::Sigmoid
        {
            return None;
        }
        let (w, used) = LstmWeights::from_keras_list(c, &list[at..]).unwrap();
        at += used;
        let back = convert(c, &w);
        assert_eq!(back.kernel.dim(), w.kernel.dim());
        out.push(back.kernel.into_dyn());
        out.push(back.recurrent_kernel.into_dyn());
        out.extend(back.bias.map(|b| b.into_dyn()));
    }
    Some(out)
}

fn check(
    name: &str,
    convert: &dyn Fn(&lstm_wgpu::LstmConfig, &LstmWeights<f64>) -> LstmWeights<f64>,
) {
    let mut checked = 0;
    for case in cases() {
        let Some(list) = converted(&case, convert) else {
            continue;
        };
        let config = case.layer_config().unwrap();
        let err = if case.dtype == "float64" {
            let mut net = Network::<f64>::from_keras_weights(&config, &list).unwrap();
            check_case(&case, &mut net).unwrap()
        } else {
            let list32: Vec<ArrayD<f32>> = list.iter().map(|a| a.mapv(|v| v as f32)).collect();
            let mut net = Network::<f32>::from_keras_weights(&config, &list32).unwrap();
            check_case(&case, &mut net).unwrap()
        };
        assert!(
            err <= cpu_tolerance(&case.dtype),
            "{name} {}: {err:e}",
            case.name
        );
        checked += 1;
    }
    assert!(checked >= 30, "{name}: only {checked} cases converted");
}

#[test]
fn pytorch_layout_round_trips_every_golden_case() {
    check("pytorch", &|c, w| {
        let p = w.to_pytorch();
        assert_eq!(p.weight_ih.dim(), (4 * c.units, w.input_dim()));
        // Split the bias between the two PyTorch vectors, as a trained model has it.
        let (bih, bhh) = match &p.bias_ih {
            Some(b) => (Some(b * 0.25), Some(b * 0.75)),
            None => (None, None),
        };
        LstmWeights::from_pytorch(
            c,
            p.weight_ih.view(),
            p.weight_hh.view(),
            bih.as_ref().map(|b| b.view()),
            bhh.as_ref().map(|b| b.view()),
        )
        .unwrap()
    });
}

#[test]
fn onnx_layout_round_trips_every_golden_case() {
    check("onnx", &|c, w| {
        let o = w.to_onnx();
        // ONNX gate order i, o, f, c: block 1 of W is Keras's output gate (block 3).
        let h = c.units;
        assert_eq!(o.w.row(h), w.kernel.column(3 * h));
        LstmWeights::from_onnx(c, o.w.view(), o.r.view(), o.b.as_ref().map(|b| b.view())).unwrap()
    });
}

#[test]
fn layouts_reject_other_activations_and_bad_shapes() {
    let c = lstm_wgpu::LstmConfig::new(2).activation(lstm_wgpu::Activation::Relu);
    let w = LstmWeights::<f32>::random(&lstm_wgpu::LstmConfig::new(2), 3, 0).unwrap();
    let p = w.to_pytorch();
    assert!(
        LstmWeights::from_pytorch(&c, p.weight_ih.view(), p.weight_hh.view(), None, None).is_err()
    );
    let ok = lstm_wgpu::LstmConfig::new(2);
    // Only one of the two PyTorch biases.
    let b = p.bias_ih.clone().unwrap();
    assert!(LstmWeights::from_pytorch(
        &ok,
        p.weight_ih.view(),
        p.weight_hh.view(),
        Some(b.view()),
        None
    )
    .is_err());
    // ONNX R of the wrong shape.
    let o = w.to_onnx();
    let r = o.r.slice(ndarray::s![..7, ..]).to_owned();
    assert!(LstmWeights::from_onnx(&ok, o.w.view(), r.view(), None).is_err());
}
