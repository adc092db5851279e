//! Model graphs from hand-written configs: masks flow as Keras's `compute_mask` says (a test
//! fails if a layer drops or invents a mask), and malformed configs (missing keys, cycles,
//! dangling inbound names, unknown classes) are errors, never panics.

use lstm_wgpu::model::{KerasModel, ModelInput};
use ndarray::{Array3, ArrayD};
use serde_json::{json, Value};

mod common;

/// Any Keras 3 weight file: the layers here have no weights, so none is read from it.
fn weights() -> Vec<u8> {
    std::fs::read(
        common::golden_dir("keras-models", "LSTM_WGPU_MODELS_DIR").join("lstm_only.weights.h5"),
    )
    .unwrap()
}

fn tensor(layer: &str, index: usize) -> Value {
    json!({"class_name": "__keras_tensor__", "config": {"shape": [null, 4, 2], "dtype": "float32", "keras_history": [layer, 0, index]}})
}

fn layer(class: &str, name: &str, config: Value, args: Vec<Value>) -> Value {
    let mut config = config;
    config["name"] = json!(name);
    let args = if args.len() == 1 {
        args[0].clone()
    } else {
        json!(args)
    };
    json!({"class_name": class, "name": name, "config": config,
           "inbound_nodes": [{"args": [args], "kwargs": {}}]})
}

fn input(name: &str) -> Value {
    json!({"class_name": "InputLayer", "name": name, "config": {"name": name, "batch_shape": [null, 4, 2], "dtype": "float32"}, "inbound_nodes": []})
}

fn model(layers: Vec<Value>, inputs: &[&str], output: &str) -> Value {
    json!({"class_name": "Functional", "config": {"name": "m", "layers": layers,
        "input_layers": inputs.iter().map(|n| json!([n, 0, 0])).collect::<Vec<_>>(),
        "output_layers": [[output, 0, 0]]}})
}

fn run(config: &Value, inputs: Vec<Array3<f32>>) -> Vec<ArrayD<f32>> {
    let mut m = KerasModel::from_config_and_weights(config, &weights()).unwrap();
    let inputs: Vec<ModelInput> = inputs.into_iter().map(|a| a.into_dyn().into()).collect();
    m.predict_inputs(&inputs).unwrap()
}

/// Rows of 4 steps, step 2 of row 0 all zeros (masked by Masking(0.0)).
fn x() -> Array3<f32> {
    let mut x = Array3::from_shape_fn((2, 4, 2), |(b, t, k)| (1 + b * 8 + t * 2 + k) as f32);
    x[[0, 2, 0]] = 0.0;
    x[[0, 2, 1]] = 0.0;
    x
}

/// The mean of row 0's feature 0 over its unmasked steps (1, 3, 7), or over all four.
const MASKED_MEAN: f32 = (1.0 + 3.0 + 7.0) / 3.0;
const ALL_MEAN: f32 = (1.0 + 3.0 + 0.0 + 7.0) / 4.0;

#[test]
fn masks_pass_through_the_layers_that_keep_them_and_stop_at_the_others() {
    let pool = |from: &str| {
        layer(
            "GlobalAveragePooling1D",
            "pool",
            json!({}),
            vec![tensor(from, 0)],
        )
    };
    let masking = layer(
        "Masking",
        "masking",
        json!({"mask_value": 0.0}),
        vec![tensor("x", 0)],
    );
    // Masking -> pooling: the average skips the masked step.
    let m = model(
        vec![input("x"), masking.clone(), pool("masking")],
        &["x"],
        "pool",
    );
    assert_eq!(run(&m, vec![x()])[0][[0, 0]], MASKED_MEAN);
    // Through the layers that keep a mask (Dropout, Activation, LayerNormalization-free ones).
    for (class, cfg) in [
        ("Dropout", json!({"rate": 0.5})),
        ("Activation", json!({"activation": "linear"})),
        ("SpatialDropout1D", json!({"rate": 0.5})),
    ] {
        let mid = layer(class, "mid", cfg, vec![tensor("masking", 0)]);
        let m = model(
            vec![input("x"), masking.clone(), mid, pool("mid")],
            &["x"],
            "pool",
        );
        assert_eq!(
            run(&m, vec![x()])[0][[0, 0]],
            MASKED_MEAN,
            "{class} dropped the mask"
        );
    }
    // Reshape has no mask support in Keras: the mask stops there.
    let reshape = layer(
        "Reshape",
        "mid",
        json!({"target_shape": [4, 2]}),
        vec![tensor("masking", 0)],
    );
    let m = model(
        vec![input("x"), masking.clone(), reshape, pool("mid")],
        &["x"],
        "pool",
    );
    assert_eq!(
        run(&m, vec![x()])[0][[0, 0]],
        ALL_MEAN,
        "Reshape kept a mask"
    );
    // No Masking: no mask invented.
    let m = model(vec![input("x"), pool("x")], &["x"], "pool");
    assert_eq!(run(&m, vec![x()])[0][[0, 0]], ALL_MEAN);
    // Merges, as Keras's compute_mask: Add ORs its inputs' masks and has none when an input
    // has none; Concatenate counts a missing mask as all present.
    let y = Array3::<f32>::zeros((2, 4, 2));
    let masking_y = layer(
        "Masking",
        "masking_y",
        json!({"mask_value": 0.0}),
        vec![tensor("y", 0)],
    );
    for (class, second, want) in [
        ("Add", "y", ALL_MEAN),
        ("Add", "masking", 2.0 * MASKED_MEAN),
        ("Concatenate", "y", ALL_MEAN),
        ("Concatenate", "masking", MASKED_MEAN),
    ] {
        let merge = layer(
            class,
            "merge",
            json!({"axis": -1}),
            vec![tensor("masking", 0), tensor(second, 0)],
        );
        let m = model(
            vec![
                input("x"),
                input("y"),
                masking.clone(),
                masking_y.clone(),
                merge,
                pool("merge"),
            ],
            &["x", "y"],
            "pool",
        );
        let got = run(&m, vec![x(), y.clone()])[0][[0, 0]];
        assert_eq!(got, want, "{class} with {second}");
    }
}

#[test]
fn malformed_configs_are_errors_not_panics() {
    let w = weights();
    let load = |c: &Value| {
        KerasModel::from_config_and_weights(c, &w)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let ok = model(
        vec![
            input("x"),
            layer(
                "Activation",
                "a",
                json!({"activation": "relu"}),
                vec![tensor("x", 0)],
            ),
        ],
        &["x"],
        "a",
    );
    assert!(KerasModel::from_config_and_weights(&ok, &w).is_ok());
    // missing keys
    for key in ["class_name", "config"] {
        let mut c = ok.clone();
        c.as_object_mut().unwrap().remove(key);
        let e = load(&c);
        assert!(e.contains(key), "{key}: {e}");
    }
    let mut c = ok.clone();
    c["config"].as_object_mut().unwrap().remove("layers");
    assert!(load(&c).contains("layers"));
    let mut c = ok.clone();
    c["config"].as_object_mut().unwrap().remove("input_layers");
    assert!(load(&c).contains("input_layers"));
    // unknown and Lambda layers: the class, the layer and the supported list
    for class in ["Lambda", "FancyLayer"] {
        let c = model(
            vec![
                input("x"),
                layer(class, "odd", json!({}), vec![tensor("x", 0)]),
            ],
            &["x"],
            "odd",
        );
        let e = load(&c);
        assert!(
            e.contains(class) && e.contains("odd") && e.contains("supported:"),
            "{e}"
        );
    }
    // a dangling inbound name and a cycle
    let c = model(
        vec![
            input("x"),
            layer(
                "Activation",
                "a",
                json!({"activation": "relu"}),
                vec![tensor("nowhere", 0)],
            ),
        ],
        &["x"],
        "a",
    );
    let e = load(&c);
    assert!(e.contains("nowhere"), "{e}");
    let c = model(
        vec![
            input("x"),
            layer("Add", "a", json!({}), vec![tensor("x", 0), tensor("b", 0)]),
            layer("Add", "b", json!({}), vec![tensor("x", 0), tensor("a", 0)]),
        ],
        &["x"],
        "b",
    );
    let e = load(&c);
    assert!(
        e.contains("never run") && e.contains('a') && e.contains('b'),
        "{e}"
    );
    // an output that is no layer
    let mut c = ok.clone();
    c["config"]["output_layers"] = json!([["ghost", 0, 0]]);
    assert!(load(&c).contains("ghost"));
    // wrong input counts at predict
    let mut m = KerasModel::from_config_and_weights(&ok, &w).unwrap();
    let e = m.predict_inputs(&[]).unwrap_err().to_string();
    assert!(e.contains("1 inputs") && e.contains("\"x\""), "{e}");
}

/// `Dot` (batch dot along (2, 2), and cosine similarity with `normalize` on 2-D tensors) and
/// `PReLU` (alpha shared over time) in a model saved by Keras
/// (`tests/data/keras/dot_prelu.*`, `scripts/record_dot_prelu_model.py`).
#[test]
fn dot_and_prelu_match_keras() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras");
    let mut m = KerasModel::load(&dir.join("dot_prelu.keras")).unwrap();
    let inputs = common::model_inputs(&dir, "dot_prelu", m.inputs());
    let got = m.predict_inputs(&inputs).unwrap();
    let want = common::expected_outputs(&dir, "dot_prelu");
    assert_eq!(got[0].shape(), &[3, 5, 6]);
    assert_eq!(got[1].shape(), &[3, 1]);
    assert!(
        common::max_abs(&got, &want) <= 1e-5,
        "{}",
        common::max_abs(&got, &want)
    );
}

/// `Dot(normalize=True)` as the Keras that wrote the file computes it: Keras 3's factor
/// `min(rsqrt(Σx²), 1e7)` for a `.keras` file, Keras 2's `rsqrt(max(Σx², 1e-12))` for a
/// tf-keras `.h5` (they differ for vectors of squared norm between 1e-14 and 1e-12; a zero
/// vector gives 0 in both), on the CPU and the GPU
/// (`tests/data/keras/dot_normalize_*`, `scripts/record_dot_normalize.py`).
#[test]
fn dot_normalizes_as_the_keras_that_wrote_the_file() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras");
    let npy = |n: &str| -> ndarray::ArrayD<f32> {
        ndarray_npy::read_npy(dir.join(format!("{n}.npy"))).unwrap()
    };
    let inputs: Vec<ModelInput> = vec![
        npy("dot_normalize.input.0").into(),
        npy("dot_normalize.input.1").into(),
    ];
    let mut outs = Vec::new();
    for (file, tag) in [
        ("dot_normalize_keras3.keras", "keras3"),
        ("dot_normalize_keras2.h5", "keras2"),
    ] {
        let mut m = KerasModel::load(&dir.join(file)).unwrap();
        let got = m.predict_inputs(&inputs).unwrap();
        let want = npy(&format!("dot_normalize_{tag}.output"));
        let e = common::max_abs(&got, std::slice::from_ref(&want));
        println!("{tag}: CPU vs Keras {e:.1e}");
        assert!(e <= 1e-5, "{tag}: {e}");
        if let Some(ctx) = common::gpu("dot_normalizes_as_the_keras_that_wrote_the_file") {
            let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &m).unwrap();
            let gpu = g.forward_inputs(&inputs).unwrap();
            let e = common::max_abs(&gpu, &got);
            println!("{tag}: GPU vs CPU {e:.1e}");
            assert!(e <= 1e-4, "{tag}: GPU {e}");
        }
        outs.push(want);
    }
    // (the two recordings differ where the floors do)
    assert!((outs[0][[0, 0]] - outs[1][[0, 0]]).abs() > 0.1);
}
