//! Keras's rules for loading a weights file into a model config (`tests/data/legacy_weights`,
//! recorded by `scripts/record_legacy_weights.py` from tf-keras 2.21 and Keras 3.15.1):
//! by order into renamed layers, by name from a file with more layers, the errors for
//! missing layers and count/shape mismatches, and CuDNNLSTM/CuDNNGRU weights converted
//! into LSTM/GRU as Keras converts them on load.

use lstm_wgpu::model::{KerasModel, WeightMatch};
use lstm_wgpu::LstmError;
use ndarray::{Array3, ArrayD};
use ndarray_npy::read_npy;
use std::path::PathBuf;

mod common;
use common::gpu;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/legacy_weights")
}

fn path(file: &str) -> PathBuf {
    dir().join(file)
}

const BY_NAME: WeightMatch = WeightMatch::ByName {
    skip_mismatch: false,
};
const SKIP: WeightMatch = WeightMatch::ByName {
    skip_mismatch: true,
};

fn load(config: &str, weights: &str, m: WeightMatch) -> lstm_wgpu::Result<KerasModel> {
    KerasModel::load_weights_with(&path(config), &path(weights), m)
}

/// `model` predicts `expected` from `NAME.input.npy` on the CPU (≤ 1e-5) and on the GPU
/// (≤ 1e-4).
fn check(name: &str, expected: &str, mut model: KerasModel) {
    let x: ArrayD<f32> = read_npy(path(&format!("{name}.input.npy"))).unwrap();
    let want: ArrayD<f32> = read_npy(path(expected)).unwrap();
    common::check_both_paths(name, &mut model, &[x.into()], &[want]);
}

#[test]
fn renamed_layers_load_by_order_as_keras_default() {
    // Keras 2.2-style names in the file (lstm_1, ...), auto-named layers in the config
    // (lstm_3, ...) with a weightless Dropout between them.
    for name in ["renamed", "renamed_functional"] {
        let config = format!("{name}.json");
        let weights = format!("{name}.h5");
        let model = KerasModel::load_weights(&path(&config), &path(&weights)).unwrap();
        check(name, &format!("{name}.expected.npy"), model);
        // the default is Order
        let model = load(&config, &weights, WeightMatch::Order).unwrap();
        check(name, &format!("{name}.expected.npy"), model);
        // by name nothing matches: an error naming a model layer the file lacks
        let e = load(&config, &weights, BY_NAME).unwrap_err();
        assert!(matches!(e, LstmError::WeightMismatch { .. }), "{e}");
        assert!(e.to_string().contains("has no layer named"), "{e}");
    }
}

#[test]
fn a_file_with_more_layers_loads_by_name() {
    let model = load("extra.json", "extra.h5", BY_NAME).unwrap();
    check("extra", "extra.expected.npy", model);
    // skip_mismatch changes nothing when everything fits
    check(
        "extra",
        "extra.expected.npy",
        load("extra.json", "extra.h5", SKIP).unwrap(),
    );
    // Keras's order load refuses it: "Layer count mismatch ... Model expected 3 layers,
    // found 4 saved layers."
    let keras = std::fs::read_to_string(path("extra.order_error.txt")).unwrap();
    assert!(keras.contains("expected 3 layers, found 4"), "{keras}");
    let e = KerasModel::load_weights(&path("extra.json"), &path("extra.h5"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer count mismatch"), "{e}");
    assert!(
        e.contains("the model has 3 layers with weights") && e.contains("the file 4"),
        "{e}"
    );
    assert!(e.contains("extra_head") && e.contains("ByName"), "{e}");
}

#[test]
fn a_layer_the_file_lacks() {
    // by order the four weighted layers pair up (extra_head's weights go to new_head), as
    // Keras's order load does
    let model = load("missing.json", "extra.h5", WeightMatch::Order).unwrap();
    check("missing", "missing.expected_order.npy", model);
    // by name new_head has no weights in the file: Keras would keep its random initial
    // weights; an error naming it
    for m in [BY_NAME, SKIP] {
        let e = load("missing.json", "extra.h5", m).unwrap_err();
        match &e {
            LstmError::WeightMismatch { layer, reason } => {
                assert_eq!(layer, "new_head");
                assert!(reason.contains("no layer named new_head"), "{reason}");
                assert!(
                    reason.contains("extra_head"),
                    "lists the file's layers: {reason}"
                );
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn count_and_shape_mismatches_name_layer_and_sizes() {
    // Keras: "Weight count mismatch for layer #1 (named lstm_b). Layer expects 2 weight(s).
    // Received 3 saved weight(s)"
    let keras = std::fs::read_to_string(path("count.by_name_error.txt")).unwrap();
    assert!(keras.contains("expects 2 weight(s). Received 3"), "{keras}");
    let e = load("count.json", "extra.h5", BY_NAME)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lstm_b") && e.contains("#1"), "{e}");
    assert!(
        e.contains("layer expects 2 weight(s), received 3 saved weight(s)"),
        "{e}"
    );
    // by order the file's extra_head makes the layer counts differ first
    let e = load("count.json", "extra.h5", WeightMatch::Order)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer count mismatch"), "{e}");
    let e = load("count.json", "extra.h5", SKIP)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lstm_b") && e.contains("skipped"), "{e}");
    // Keras: "Shape mismatch in layer #2 (named head) for weight head/kernel:0. Weight
    // expects shape (4, 6). Received saved weight with shape (4, 3)"
    let keras = std::fs::read_to_string(path("shape.by_name_error.txt")).unwrap();
    assert!(keras.contains("named head"), "{keras}");
    let e = load("shape.json", "extra.h5", BY_NAME).unwrap_err();
    match &e {
        LstmError::ShapeMismatch { what, .. } => {
            assert!(what.contains("layer #2 (named head)"), "{what}")
        }
        other => panic!("{other}"),
    }
    let text = e.to_string();
    assert!(text.contains('3') && text.contains('6'), "sizes: {text}");
    let e = load("shape.json", "extra.h5", SKIP)
        .unwrap_err()
        .to_string();
    assert!(e.contains("head") && e.contains("skipped"), "{e}");
}

#[test]
fn keras3_weights_match_by_position_not_name() {
    let model = load(
        "k3_renamed.json",
        "k3_renamed.weights.h5",
        WeightMatch::Order,
    )
    .unwrap();
    check("k3_renamed", "k3_renamed.expected.npy", model);
    let e = load("k3_renamed.json", "k3_renamed.weights.h5", BY_NAME)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no layer names") && e.contains("Order"), "{e}");
}

#[test]
fn cudnn_weights_convert_into_lstm_and_gru() {
    for (name, twin) in [("cudnn_lstm", "lstm"), ("cudnn_gru", "gru")] {
        let expected = format!("{name}.expected.npy");
        // the CuDNN file into the LSTM/GRU twin (Keras converts on load), both matchings
        let weights = format!("{name}.h5");
        for m in [WeightMatch::Order, BY_NAME] {
            let model = load(&format!("{name}.{twin}.json"), &weights, m).unwrap();
            check(name, &expected, model);
        }
        // the CuDNN classes in the config: run as the LSTM/GRU they compute
        let model = load(&format!("{name}.cudnn.json"), &weights, WeightMatch::Order).unwrap();
        let classes: Vec<&str> = model
            .layer_classes()
            .iter()
            .map(|(_, c)| c.as_str())
            .collect();
        assert!(
            classes.iter().any(|c| c.starts_with("CuDNN")),
            "{classes:?}"
        );
        check(name, &expected, model);
        // the whole-model file saved with CuDNN layers
        let mut model = KerasModel::load(&path(&format!("{name}.model.h5"))).unwrap();
        // parameters as Keras's summary counts them (a CuDNNLSTM's [8H] bias in full)
        let params: Vec<usize> = model.summary().unwrap().iter().map(|l| l.params).collect();
        let want = if twin == "lstm" {
            [0, 200, 240, 14] // 3*20 + 5*20 + 40; 2 * (5*12 + 3*12 + 24); 6*2 + 2
        } else {
            [0, 150, 180, 14] // 3*15 + 5*15 + 30; 2 * (5*9 + 3*9 + 18)
        };
        assert_eq!(params, want, "{name}");
        check(name, &expected, model);
    }
}

#[test]
fn a_mask_reaching_a_cudnn_layer_is_refused_as_keras_refuses_it() {
    let mut model = KerasModel::load(&path("cudnn_lstm.model.h5")).unwrap();
    let x = ndarray::Array3::<f32>::zeros((2, 7, 3)).into_dyn();
    let mask = ndarray::Array2::from_elem((2, 7), true);
    let e = model
        .predict_with(&[x.clone().into()], Some(mask.view()), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("CuDNN") && e.contains("c1"), "{e}");
    if let Some(ctx) = gpu("cudnn mask") {
        let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
        let x3 = x.into_dimensionality::<ndarray::Ix3>().unwrap();
        let e = g
            .forward(x3.view(), None, Some(mask.view()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CuDNN") && e.contains("c1"), "{e}");
    }
}

#[test]
fn tf_keras_json_configs_load_keras2_semantics() {
    // tf-keras's to_json() carries keras_version 2.x: hard_sigmoid there is Keras 2's.
    let text = std::fs::read_to_string(path("renamed.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(json["keras_version"].as_str().unwrap().starts_with("2."));
    for l in json["config"]["layers"].as_array_mut().unwrap() {
        if l["class_name"] == "LSTM" {
            l["config"]["recurrent_activation"] = "hard_sigmoid".into();
        }
    }
    let bytes = std::fs::read(path("renamed.h5")).unwrap();
    let model = KerasModel::from_config_and_weights(&json, &bytes).unwrap();
    let recurrent: Vec<_> = model
        .layers()
        .iter()
        .filter_map(|(_, l)| match l {
            lstm_wgpu::model::ModelLayer::Recurrent(lstm_wgpu::Network::Lstm(l)) => {
                Some(l.config().recurrent_activation)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        recurrent,
        vec![lstm_wgpu::Activation::HardSigmoidKeras2; 2],
        "{:?}",
        model.chain_error()
    );
}

/// Configs mutated at random (a value removed, nulled, negative, a wrong type, a huge
/// number, another class name) loaded with the recorded legacy files by order and by name:
/// an error or a result, never a panic.
#[test]
fn mutated_configs_with_legacy_weights_never_panic() {
    use serde_json::Value;
    let cases = [
        ("renamed.json", "renamed.h5", "renamed"),
        ("extra.json", "extra.h5", "extra"),
        ("cudnn_lstm.cudnn.json", "cudnn_lstm.h5", "cudnn_lstm"),
        ("cudnn_gru.gru.json", "cudnn_gru.h5", "cudnn_gru"),
        (
            "renamed_functional.json",
            "renamed_functional.h5",
            "renamed_functional",
        ),
    ];
    let (mut ran, mut errors) = (0, 0);
    for (json, h5, name) in cases {
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(path(json)).unwrap()).unwrap();
        let weights = std::fs::read(path(h5)).unwrap();
        let x: Array3<f32> = read_npy(path(&format!("{name}.input.npy"))).unwrap();
        let mut mutator = common::Mutator::new(&config, 0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        let replacements = [
            None,
            Some(Value::Null),
            Some(serde_json::json!(-3)),
            Some(serde_json::json!("CuDNNGRU")),
            Some(serde_json::json!(1e12)),
            Some(serde_json::json!([[]])),
        ];
        for k in 0..60 {
            let Some((c, _)) = mutator.mutate(&config, &replacements) else {
                continue;
            };
            let m = if k % 2 == 0 {
                WeightMatch::Order
            } else {
                BY_NAME
            };
            ran += 1;
            match KerasModel::from_config_and_weights_with(&c, &weights, m) {
                Ok(mut model) => {
                    if model.predict(x.view()).is_err() {
                        errors += 1;
                    }
                }
                Err(_) => errors += 1,
            }
        }
    }
    println!("{ran} mutated configs, {errors} errors, no panic");
    assert!(ran > 200 && errors > 0);
}
