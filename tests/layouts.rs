//! PyTorch and ONNX weight layouts: every golden case (LSTM, GRU, SimpleRNN) whose layers
//! have a form in the layout (its activations; PyTorch: a GRU with reset_after) is converted
//! to each layout and back and must still reproduce the recorded Keras outputs.

use lstm_wgpu::golden::{case_files, check_case, cpu_tolerance, Case};
use lstm_wgpu::{Cell, LstmConfig, LstmWeights, Network};
use ndarray::ArrayD;

mod common;

fn cases() -> Vec<Case> {
    let rnn = common::golden_dir("keras-rnn", "LSTM_WGPU_RNN_CASES");
    [common::lstm_cases_dir(), rnn]
        .iter()
        .flat_map(|dir| case_files(dir).unwrap())
        .map(|f| Case::load(&f).unwrap())
        .collect()
}

/// Rebuilds the case's weight list, passing every LSTM's weights through `convert`.
/// `convert` returns None when the layer has no form in the layout (the case is skipped).
type Convert<'a> = &'a dyn Fn(&LstmConfig, &LstmWeights<f64>) -> Option<LstmWeights<f64>>;

fn converted(case: &Case, convert: Convert<'_>) -> Option<Vec<ArrayD<f64>>> {
    let config = case.layer_config().unwrap();
    let list = case.weight_arrays::<f64>().unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    for c in config.lstms() {
        let (w, used) = LstmWeights::from_keras_list(c, &list[at..]).unwrap();
        at += used;
        let back = convert(c, &w)?;
        assert_eq!(back.kernel.dim(), w.kernel.dim());
        out.push(back.kernel.into_dyn());
        out.push(back.recurrent_kernel.into_dyn());
        // (a reset_after GRU's bias is [6H] here, Keras's [2, 3H] in a weight list)
        out.extend(back.bias.map(|b| {
            match c.cell {
                Cell::Gru { reset_after: true } => b
                    .into_shape_with_order((2, 3 * c.units))
                    .unwrap()
                    .into_dyn(),
                _ => b.into_dyn(),
            }
        }));
    }
    Some(out)
}

fn check(name: &str, convert: Convert<'_>) -> Vec<String> {
    let mut checked = Vec::new();
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
        checked.push(case.name.clone());
    }
    checked
}

/// How many of `names` are cases of each cell (by the case-name prefix).
fn count(names: &[String], prefix: &str) -> usize {
    names.iter().filter(|n| n.starts_with(prefix)).count()
}

#[test]
fn pytorch_layout_round_trips_every_golden_case() {
    let names = check("pytorch", &|c, w| {
        let p = w.to_pytorch(c).ok()?;
        assert_eq!(p.weight_ih.dim(), (c.cell.gates() * c.units, w.input_dim()));
        // Move part of the bias into bias_hh where Keras has one (LSTM, SimpleRNN), as a
        // trained PyTorch model has it; a GRU's two biases are separate already.
        let (bih, bhh) = match (&p.bias_ih, &p.bias_hh, c.cell) {
            (Some(i), Some(h), Cell::Gru { .. }) => (Some(i.clone()), Some(h.clone())),
            (Some(b), Some(_), _) => (Some(b * 0.25), Some(b * 0.75)),
            _ => (None, None),
        };
        LstmWeights::from_pytorch(
            c,
            p.weight_ih.view(),
            p.weight_hh.view(),
            bih.as_ref().map(|b| b.view()),
            bhh.as_ref().map(|b| b.view()),
        )
        .ok()
    });
    // LSTM cases with PyTorch's activations, GRUs with reset_after, tanh/relu SimpleRNNs.
    assert!(names.len() >= 60, "{} cases: {names:?}", names.len());
    assert!(
        count(&names, "gru_") >= 15 && count(&names, "simplernn_") >= 15,
        "{names:?}"
    );
}

#[test]
fn onnx_layout_round_trips_every_golden_case() {
    let names = check("onnx", &|c, w| {
        let o = w.to_onnx(c).ok()?;
        let h = c.units;
        if c.cell == Cell::Lstm {
            // ONNX gate order i, o, f, c: block 1 of W is Keras's output gate (block 3).
            assert_eq!(o.w.row(h), w.kernel.column(3 * h));
        }
        LstmWeights::from_onnx(c, o.w.view(), o.r.view(), o.b.as_ref().map(|b| b.view())).ok()
    });
    assert!(names.len() >= 60, "{} cases: {names:?}", names.len());
    // Both GRU forms (linear_before_reset 1 and 0).
    assert!(
        names.iter().any(|n| n.starts_with("gru_reset_before")),
        "{names:?}"
    );
}

#[test]
fn layouts_reject_other_activations_and_bad_shapes() {
    let c = lstm_wgpu::LstmConfig::new(2).activation(lstm_wgpu::Activation::Relu);
    let w = LstmWeights::<f32>::random(&lstm_wgpu::LstmConfig::new(2), 3, 0).unwrap();
    let p = w.to_pytorch(&lstm_wgpu::LstmConfig::new(2)).unwrap();
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
    let o = w.to_onnx(&ok).unwrap();
    let r = o.r.slice(ndarray::s![..7, ..]).to_owned();
    assert!(LstmWeights::from_onnx(&ok, o.w.view(), r.view(), None).is_err());
}

#[test]
fn a_gru_without_reset_after_has_no_pytorch_form() {
    let c = LstmConfig::gru(3).cell(Cell::Gru { reset_after: false });
    let w = LstmWeights::<f32>::random(&c, 2, 0).unwrap();
    let e = w.to_pytorch(&c).unwrap_err().to_string();
    assert!(e.contains("reset_after"), "{e}");
    // The weights must be the configuration's.
    let e = w.to_onnx(&LstmConfig::new(3)).unwrap_err().to_string();
    assert!(e.contains("kernel"), "{e}");
}
