//! `ConvLSTM2D` and `ConvLSTM1D` in models recorded from Keras 3.15.1
//! (`tests/data/conv_lstm`, `scripts/record_conv_lstm.py`): same and valid padding, strides,
//! an even kernel, dilation, go_backwards, states returned, relu/hard_sigmoid, no bias, a
//! timestep mask passed as `mask=`, initial states from another layer, stacked layers with
//! BatchNormalization and a Conv2D head, `Bidirectional` around both ranks (every merge mode,
//! a backward layer of its own, a mask, four initial states, states returned); on both
//! paths, the GPU in one submission.

use lstm_wgpu::model::{KerasModel, ModelInput};
use ndarray::ArrayD;
use std::path::PathBuf;

mod common;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/conv_lstm")
}

#[test]
fn conv_lstm_models_match_keras_on_both_paths() {
    for name in [
        "seq_same",
        "options",
        "conv1d_masked",
        "next_frame",
        "bidirectional",
        "bidirectional_1d",
    ] {
        let mut model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
        let inputs: Vec<ModelInput> = common::model_inputs(&dir(), name, model.inputs());
        let want: Vec<ArrayD<f32>> = common::expected_outputs(&dir(), name);
        common::check_both_paths(name, &mut model, &inputs, &want);
    }
}

/// `summary()` gives Keras's parameter count (kernel 3·3·3·16 + recurrent kernel 3·3·4·16 +
/// bias 16 = 1,024, as `model.summary()` prints) and output shape.
#[test]
fn summary_counts_conv_lstm_parameters() {
    let mut model = KerasModel::load(&dir().join("seq_same.keras")).unwrap();
    let s = model.summary().unwrap();
    let layer = s.iter().find(|l| l.class == "ConvLSTM2D").unwrap();
    assert_eq!(layer.params, 1024);
    assert_eq!(
        layer.output_shapes,
        vec![vec![None, None, Some(7), Some(6), Some(4)]]
    );
    assert!(layer.gpu);
}

/// Wrong input ranks and bad options are errors naming the layer or the key.
#[test]
fn bad_conv_lstm_inputs_and_configs_are_errors() {
    let mut model = KerasModel::load(&dir().join("seq_same.keras")).unwrap();
    let x = ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 5, 7, 3]));
    let err = model.predict_inputs(&[x.into()]).unwrap_err();
    assert!(
        err.to_string().contains("frames") || err.to_string().contains("convlstm"),
        "{err}"
    );
    let keras = std::fs::read(dir().join("seq_same.keras")).unwrap();
    let members = lstm_wgpu::archive::members(&keras).unwrap();
    let member = |n: &str| members.iter().find(|(m, _)| m == n).unwrap().1;
    let config: serde_json::Value = serde_json::from_slice(member("config.json")).unwrap();
    for (key, value, expect) in [
        ("stateful", serde_json::json!(true), "stateful"),
        (
            "data_format",
            serde_json::json!("channels_first"),
            "data_format",
        ),
        ("padding", serde_json::json!("causal"), "padding"),
        ("strides", serde_json::json!([2, 2]), ""),
        ("kernel_size", serde_json::json!([5, 5]), "kernel"),
    ] {
        let mut c = config.clone();
        let layers = c["config"]["layers"].as_array_mut().unwrap();
        let layer = layers
            .iter_mut()
            .find(|l| l["class_name"] == "ConvLSTM2D")
            .unwrap();
        layer["config"][key] = value.clone();
        if key == "strides" {
            // strides with dilation > 1 is refused, as Keras refuses it
            layer["config"]["dilation_rate"] = serde_json::json!([2, 2]);
        }
        let err = KerasModel::from_config_and_weights(&c, member("model.weights.h5"))
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} loaded"));
        assert!(err.to_string().contains(expect), "{key}: {err}");
    }
}

/// Bidirectional ConvLSTM: Keras's parameter counts (both directions), and configs Keras
/// refuses are errors naming the key.
#[test]
fn bidirectional_conv_lstm_summary_and_bad_configs() {
    let mut model = KerasModel::load(&dir().join("bidirectional.keras")).unwrap();
    let s = model.summary().unwrap();
    let layer = |n: &str| s.iter().find(|l| l.name == n).unwrap();
    // 2 x (3·3·2·12 + 3·3·3·12 + 12) = 1,104, as model.summary() prints
    assert_eq!(layer("bi_concat").params, 1104);
    assert_eq!(
        layer("bi_concat").output_shapes,
        vec![vec![None, Some(5), Some(6), Some(5), Some(6)]]
    );
    assert!(layer("bi_concat").gpu);
    let keras = std::fs::read(dir().join("bidirectional.keras")).unwrap();
    let members = lstm_wgpu::archive::members(&keras).unwrap();
    let member = |n: &str| members.iter().find(|(m, _)| m == n).unwrap().1;
    let config: serde_json::Value = serde_json::from_slice(member("config.json")).unwrap();
    for (edit, expect) in [
        ("backward go_backwards false", "go_backwards"),
        ("backward returns states", "return_state"),
        ("merge_mode max", "merge_mode"),
        ("backward LSTM", "backward_layer"),
    ] {
        let mut c = config.clone();
        let layers = c["config"]["layers"].as_array_mut().unwrap();
        let bi = layers.iter_mut().find(|l| l["name"] == "bi_ave").unwrap();
        let back = &mut bi["config"]["backward_layer"];
        match edit {
            "backward go_backwards false" => back["config"]["go_backwards"] = false.into(),
            "backward returns states" => back["config"]["return_state"] = true.into(),
            "merge_mode max" => bi["config"]["merge_mode"] = "max".into(),
            _ => back["class_name"] = "LSTM".into(),
        }
        let err = KerasModel::from_config_and_weights(&c, member("model.weights.h5"))
            .err()
            .unwrap_or_else(|| panic!("{edit}: loaded"));
        assert!(err.to_string().contains(expect), "{edit}: {err}");
    }
}

/// In training (`train::Functional`): a ConvLSTM2D model predicts Keras's outputs and has
/// finite, nonzero gradients; what training does not build is refused by name (a
/// ConvLSTM's returned states, a Bidirectional one).
#[test]
fn conv_lstm_models_in_training() {
    use lstm_wgpu::train::Functional;
    common::check_trainable(&dir(), "seq_same", 1e-5);
    for (name, words) in [
        ("options", ["return_state", "options"]),
        ("bidirectional", ["around ConvLSTM2D", "bi_concat"]),
    ] {
        let model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
        let e = Functional::<f32>::from_model(&model)
            .unwrap_err()
            .to_string();
        for w in words {
            assert!(e.contains(w), "{name}: {e}");
        }
    }
}
