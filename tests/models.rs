//! Real Keras models (`../shared/golden/keras-models`): predictions on the CPU path, the same
//! weights through `.weights.h5`, and corrupt or truncated files.

use lstm_wgpu::archive;
use lstm_wgpu::model::KerasModel;
use ndarray::{Array3, ArrayD};
use ndarray_npy::read_npy;
use std::path::PathBuf;

mod common;
use common::{gpu, max_abs};

const MODELS: [&str; 7] = [
    "lstm_only",
    "lstm_seq_dense",
    "masked_classifier",
    "stacked_bidi",
    "go_backwards_relu",
    "functional_states",
    "bidi_sum_last",
];

fn dir() -> PathBuf {
    common::golden_dir("keras-models", "LSTM_WGPU_MODELS_DIR")
}

fn expected(name: &str) -> Vec<ArrayD<f32>> {
    common::expected_outputs(&dir(), name)
}

#[test]
fn every_model_matches_keras_on_cpu() {
    let mut worst = (0.0f32, "");
    for name in MODELS {
        let mut model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
        let x: Array3<f32> = read_npy(dir().join(format!("{name}.input.npy"))).unwrap();
        let want = expected(name);
        assert!(!want.is_empty(), "{name}: no expected outputs");
        let got = model.predict(x.view()).unwrap();
        let e = max_abs(&got, &want);
        assert!(e <= 1e-5, "{name}: {e}");
        if e > worst.0 {
            worst = (e, name);
        }
    }
    println!("worst model error on the CPU: {:e} ({})", worst.0, worst.1);
}

#[test]
fn every_model_matches_keras_on_gpu_in_one_submission() {
    let Some(ctx) = gpu("every_model_matches_keras_on_gpu_in_one_submission") else {
        return;
    };
    let mut worst = (0.0f32, "");
    for name in MODELS {
        let model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
        let mut gpu = lstm_wgpu::gpu::GpuNetwork::from_model(ctx.clone(), &model).unwrap();
        let x: Array3<f32> = read_npy(dir().join(format!("{name}.input.npy"))).unwrap();
        let got = gpu.forward(x.view(), None, None).unwrap();
        let st = gpu.stats();
        assert_eq!((st.submits, st.readbacks), (1, 1), "{name}");
        let e = max_abs(&got, &expected(name));
        assert!(e <= 1e-4, "{name}: {e}");
        if e > worst.0 {
            worst = (e, name);
        }
    }
    println!(
        "worst model error on the GPU: {:e} ({}) on {}",
        worst.0,
        worst.1,
        ctx.describe()
    );
}

#[test]
fn weights_h5_with_the_archives_config_gives_the_same_predictions() {
    for name in MODELS {
        let keras = std::fs::read(dir().join(format!("{name}.keras"))).unwrap();
        let members = archive::members(&keras).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(members.iter().find(|(n, _)| n == "config.json").unwrap().1)
                .unwrap();
        let h5 = std::fs::read(dir().join(format!("{name}.weights.h5"))).unwrap();
        let mut a = KerasModel::from_config_and_weights(&config, &h5).unwrap();
        let mut c = KerasModel::load_weights(
            &dir().join(format!("{name}.keras")),
            &dir().join(format!("{name}.weights.h5")),
        )
        .unwrap();
        let mut b = KerasModel::from_keras_bytes(&keras).unwrap();
        let x: Array3<f32> = read_npy(dir().join(format!("{name}.input.npy"))).unwrap();
        let want = b.predict(x.view()).unwrap();
        assert_eq!(a.predict(x.view()).unwrap(), want, "{name}");
        assert_eq!(c.predict(x.view()).unwrap(), want, "{name}");
    }
}

/// A shared model's `config.json` and `model.weights.h5`, from its `.keras` archive.
fn config_and_weights(name: &str) -> (serde_json::Value, Vec<u8>) {
    let keras = std::fs::read(dir().join(format!("{name}.keras"))).unwrap();
    let members = archive::members(&keras).unwrap();
    let member = |want: &str| members.iter().find(|(n, _)| n == want).unwrap().1;
    let config = serde_json::from_slice(member("config.json")).unwrap();
    (config, member("model.weights.h5").to_vec())
}

#[test]
fn unsupported_layers_and_wrong_weights_are_errors() {
    let (config, h5) = config_and_weights("lstm_seq_dense");
    let h5 = h5.as_slice();
    // An unknown layer class: the error names the class and the layer.
    let text = config.to_string().replacen(
        "\"class_name\":\"Dense\"",
        "\"class_name\":\"ConvLSTM3D\"",
        1,
    );
    let unknown: serde_json::Value = serde_json::from_str(&text).unwrap();
    let e = KerasModel::from_config_and_weights(&unknown, h5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ConvLSTM3D") && e.contains("dense"), "{e}");
    // A config whose LSTM is wider than its weights: a shape error naming the weight.
    let text = config
        .to_string()
        .replacen("\"units\":32", "\"units\":33", 1);
    let wide: serde_json::Value = serde_json::from_str(&text).unwrap();
    let e = KerasModel::from_config_and_weights(&wide, h5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("kernel") || e.contains("shape"), "{e}");
    // A missing weight file member.
    assert!(KerasModel::from_config_and_weights(&config, b"").is_err());
    // A missing file: an Io error naming the path, with the operating system's error as source.
    let missing = dir().join("no_such_model.keras");
    match KerasModel::load(&missing) {
        Err(e @ lstm_wgpu::LstmError::Io { .. }) => {
            assert!(e.to_string().contains("no_such_model.keras"), "{e}");
            let source = std::error::Error::source(&e).expect("the I/O error is kept");
            assert!(source.downcast_ref::<std::io::Error>().is_some());
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    // A corrupt weights file: the error names that file, not "HDF5 weights".
    let weights = std::env::temp_dir().join(format!(
        "lstm_wgpu_truncated_{}.weights.h5",
        std::process::id()
    ));
    let h5 = std::fs::read(dir().join("lstm_seq_dense.weights.h5")).unwrap();
    std::fs::write(&weights, &h5[..h5.len() / 3]).unwrap();
    let e = KerasModel::load_weights(&dir().join("lstm_seq_dense.keras"), &weights).unwrap_err();
    std::fs::remove_file(&weights).unwrap();
    assert!(e.to_string().contains("lstm_wgpu_truncated_"), "{e}");
}

/// Truncated and bit-flipped copies of every file: an error or (for the CRC-checked
/// `.keras` archives) the correct result, never a panic. `.weights.h5` files carry no
/// checksums (superblock version 0), so a flipped bit inside a weight is undetectable there:
/// for them the test requires an error or a finished prediction.
#[test]
fn corrupt_and_truncated_files_give_errors_not_panics() {
    let mut errors = 0usize;
    let mut correct = 0usize;
    for name in MODELS {
        let x: Array3<f32> = read_npy(dir().join(format!("{name}.input.npy"))).unwrap();
        let want = expected(name);
        for ext in ["keras", "weights.h5"] {
            let original = std::fs::read(dir().join(format!("{name}.{ext}"))).unwrap();
            let mut variants: Vec<Vec<u8>> = Vec::new();
            for k in 0..24 {
                variants.push(original[..original.len() * k / 24].to_vec());
            }
            let mut seed = 0x9E37_79B9_7F4A_7C15u64;
            for _ in 0..48 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mut v = original.clone();
                let at = (seed >> 33) as usize % v.len();
                v[at] ^= 1 << ((seed >> 29) & 7);
                variants.push(v);
            }
            let config = if ext == "weights.h5" {
                let keras = std::fs::read(dir().join(format!("{name}.keras"))).unwrap();
                let members = archive::members(&keras).unwrap();
                Some(
                    serde_json::from_slice::<serde_json::Value>(
                        members.iter().find(|(n, _)| n == "config.json").unwrap().1,
                    )
                    .unwrap(),
                )
            } else {
                None
            };
            for v in variants {
                let loaded = match &config {
                    None => KerasModel::from_keras_bytes(&v),
                    Some(c) => KerasModel::from_config_and_weights(c, &v),
                };
                match loaded.and_then(|mut m| m.predict(x.view())) {
                    Err(_) => errors += 1,
                    Ok(got) => {
                        if ext == "keras" {
                            assert!(
                                max_abs(&got, &want) <= 1e-5,
                                "{name}.{ext}: a corrupt archive loaded with wrong results"
                            );
                        }
                        correct += 1;
                    }
                }
            }
        }
    }
    println!("corrupt variants: {errors} errors, {correct} loaded");
    assert!(errors > 0);
}

/// What the GPU path cannot run is refused by name, never run as something else: a Permute
/// of a rank-5 tensor (the GPU moves tensors of up to 4 axes) runs on the CPU path, and
/// `GpuNetwork` says which layer it cannot plan and where to run it.
#[test]
fn layers_beyond_the_gpu_kernels_are_refused_by_name() {
    let Some(ctx) = gpu("layers_beyond_the_gpu_kernels_are_refused_by_name") else {
        return;
    };
    let tensor = |name: &str| {
        serde_json::json!({"class_name": "__keras_tensor__",
            "config": {"shape": null, "dtype": "float32", "keras_history": [name, 0, 0]}})
    };
    let config = serde_json::json!({"class_name": "Functional", "config": {"name": "rank5",
        "layers": [
            {"class_name": "InputLayer", "name": "x", "config": {"batch_shape": [null, 2, 3, 4, 5],
                "dtype": "float32", "name": "x"}, "inbound_nodes": []},
            {"class_name": "Permute", "name": "permute", "config": {"dims": [2, 1, 3, 4]},
                "inbound_nodes": [{"args": [tensor("x")], "kwargs": {}}]}
        ],
        "input_layers": [["x", 0, 0]], "output_layers": [["permute", 0, 0]]}});
    let weights = std::fs::read(
        common::golden_dir("keras-zoo", "LSTM_WGPU_ZOO_DIR").join("p_merge_layers.weights.h5"),
    )
    .unwrap();
    let mut model = KerasModel::from_config_and_weights(&config, &weights).unwrap();
    let x = ndarray::ArrayD::<f32>::from_shape_fn(ndarray::IxDyn(&[2, 2, 3, 4, 5]), |i| {
        (i[1] * 60 + i[2] * 20 + i[3] * 5 + i[4]) as f32
    });
    let cpu = model.predict_inputs(&[x.clone().into()]).unwrap();
    assert_eq!(cpu[0].shape(), &[2, 3, 2, 4, 5]);
    assert_eq!(cpu[0][[0, 2, 1, 3, 4]], x[[0, 1, 2, 3, 4]]);
    let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
    let e = g.forward_inputs(&[x.into()]).unwrap_err();
    assert!(
        matches!(e, lstm_wgpu::LstmError::UnsupportedOnPath { .. })
            && e.to_string().contains("rank-5")
            && e.to_string().contains("CPU path"),
        "{e}"
    );
}

/// A Keras model mixing Masking, Bidirectional(GRU), a reset-before GRU, SimpleRNN and Dense
/// (`tests/data/keras/gru_stack.*`, recorded by `scripts/record_gru_model.py`): Keras's
/// prediction on both paths.
#[test]
fn a_gru_and_simple_rnn_model_matches_keras_on_both_paths() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras");
    let mut model = KerasModel::load(&data.join("gru_stack.keras")).unwrap();
    let x: Array3<f32> = read_npy(data.join("gru_stack.input.npy")).unwrap();
    let want: ArrayD<f32> = read_npy(data.join("gru_stack.expected.npy")).unwrap();
    let got = model.predict(x.view()).unwrap();
    let e = max_abs(&got, std::slice::from_ref(&want));
    assert!(e <= 1e-5, "cpu: {e}");
    gpu_matches_keras(
        "a_gru_and_simple_rnn_model_matches_keras_on_both_paths",
        &model,
        x.view(),
        &want,
    );
}

/// A model's predict takes an explicit mask and initial states as the layer API does: for
/// `lstm_seq_dense` (LSTM → Dense), `predict_with(x, mask, [h0, c0])` equals the LSTM layer
/// run with them (`Network::forward`) followed by the Dense layer, on the CPU; the GPU's
/// `forward(x, initial_state, mask)` gives the same; a model of two recurrent calls refuses
/// initial states by name.
#[test]
fn model_predict_takes_a_mask_and_initial_states() {
    use lstm_wgpu::model::{DenseActivation, ModelLayer};
    let dir = common::golden_dir("keras-models", "LSTM_WGPU_MODELS_DIR");
    let mut model = KerasModel::load(&dir.join("lstm_seq_dense.keras")).unwrap();
    let x: ndarray::Array3<f32> = read_npy(dir.join("lstm_seq_dense.input.npy")).unwrap();
    let (b, t, _) = x.dim();
    let layers = model.layers().to_vec();
    let [(_, ModelLayer::Recurrent(net)), (
        _,
        ModelLayer::Dense {
            kernel,
            bias,
            activation,
        },
    )] = &layers[..]
    else {
        panic!(
            "lstm_seq_dense is LSTM -> Dense: {:?}",
            model.layer_classes()
        );
    };
    let units = kernel.nrows();
    let h0 = ndarray::Array2::from_shape_fn((b, units), |(i, j)| ((i + 2 * j) as f32 * 0.37).sin());
    let c0 = ndarray::Array2::from_shape_fn((b, units), |(i, j)| ((3 * i + j) as f32 * 0.21).cos());
    let mask = ndarray::Array2::from_shape_fn((b, t), |(i, s)| s + i < t - 1);
    let init = [h0.view(), c0.view()];
    let mut net = net.clone();
    let seq = net
        .forward(x.view(), Some(&init), Some(mask.view()))
        .unwrap();
    let mut want = seq[0]
        .clone()
        .into_dimensionality::<ndarray::Ix3>()
        .unwrap()
        .dot_last(kernel);
    if let Some(bias) = bias {
        want += bias;
    }
    let DenseActivation::Elementwise(act) = activation else {
        panic!("a softmax Dense");
    };
    want.mapv_inplace(|v| act.apply(v));
    let got = model
        .predict_with(
            &[x.clone().into_dyn().into()],
            Some(mask.view()),
            Some(&init),
        )
        .unwrap();
    let e = max_abs(&got, &[want.into_dyn()]);
    assert!(e <= 1e-5, "cpu: {e}");
    if let Some(ctx) = gpu("model_predict_takes_a_mask_and_initial_states") {
        let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
        let gpu_out = g.forward(x.view(), Some(&init), Some(mask.view())).unwrap();
        let e = max_abs(&gpu_out, &got);
        assert!(e <= 1e-4, "gpu vs cpu: {e}");
    }
    // Two recurrent calls: no single layer to give the states to.
    let zoo = common::golden_dir("keras-zoo", "LSTM_WGPU_ZOO_DIR");
    let mut two = KerasModel::load(&zoo.join("p_simplernn_autoencoder.keras")).unwrap();
    let x2 = ndarray::Array3::<f32>::zeros((3, 7, 2)).into_dyn();
    let h = ndarray::Array2::<f32>::zeros((3, 6));
    let e = two
        .predict_with(&[x2.into()], None, Some(&[h.view()]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exactly one recurrent"), "{e}");
}

/// `x [B, T, I] · k [I, N]` over the last axis.
trait DotLast {
    fn dot_last(&self, k: &ndarray::Array2<f32>) -> ndarray::Array3<f32>;
}

impl DotLast for ndarray::Array3<f32> {
    fn dot_last(&self, k: &ndarray::Array2<f32>) -> ndarray::Array3<f32> {
        let (b, t, i) = self.dim();
        let flat = self
            .view()
            .into_shape_with_order((b * t, i))
            .unwrap()
            .dot(k);
        flat.into_shape_with_order((b, t, k.ncols())).unwrap()
    }
}

/// Models used as layers (`tests/data/keras/nested.*`, `scripts/record_nested_model.py`): a
/// Sequential and a functional model called inside a functional one, the Masking mask flowing
/// through both, weights from the `.keras` file and from `.weights.h5`: Keras's prediction on
/// the CPU and on the GPU (one submission).
#[test]
fn nested_models_match_keras_on_both_paths() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras");
    let want: ArrayD<f32> = read_npy(dir.join("nested.expected.npy")).unwrap();
    let x: Array3<f32> = read_npy(dir.join("nested.input.npy")).unwrap();
    for weights in [false, true] {
        let mut model = if weights {
            KerasModel::load_weights(&dir.join("nested.keras"), &dir.join("nested.weights.h5"))
        } else {
            KerasModel::load(&dir.join("nested.keras"))
        }
        .unwrap();
        let got = model.predict(x.view()).unwrap();
        let e = max_abs(&got, std::slice::from_ref(&want));
        assert!(e <= 1e-5, "cpu: {e}");
        let summary = model.summary().unwrap();
        let params: usize = summary.iter().map(|l| l.params).sum();
        // LSTM(5) on 3: 4·5·(3+5+1); Dense(4): 24; GRU(6) on 4, reset_after: 3·6·(4+6+2);
        // Dense(2): 14
        assert_eq!(params, 180 + 24 + 216 + 14);
        gpu_matches_keras(
            "nested_models_match_keras_on_both_paths",
            &model,
            x.view(),
            &want,
        );
    }
}

/// `TimeDistributed` around layers other than Dense (`tests/data/keras/time_distributed.*`,
/// `scripts/record_time_distributed_model.py`: TimeDistributed LSTM, Flatten and
/// LayerNormalization on a `(B, 3, 5, 2)` input, then a GRU): Keras's prediction on the CPU
/// and on the GPU (the inner LSTM on B·T rows with state buffers of its own).
#[test]
fn time_distributed_layers_match_keras_on_both_paths() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras");
    let want: ArrayD<f32> = read_npy(dir.join("time_distributed.expected.npy")).unwrap();
    let x: ArrayD<f32> = read_npy(dir.join("time_distributed.input.npy")).unwrap();
    let mut model = KerasModel::load(&dir.join("time_distributed.keras")).unwrap();
    let got = model.predict_inputs(&[x.clone().into()]).unwrap();
    let e = max_abs(&got, std::slice::from_ref(&want));
    assert!(e <= 1e-5, "cpu: {e}");
    if let Some(ctx) = gpu("time_distributed_layers_match_keras_on_both_paths") {
        let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
        for _ in 0..2 {
            // (twice: the inner LSTM's own state buffers start from zeros every forward)
            let got = g.forward_inputs(&[x.clone().into()]).unwrap();
            let e = max_abs(&got, std::slice::from_ref(&want));
            assert!(e <= 1e-4, "gpu: {e}");
        }
        assert_eq!(g.stats().submits, 1);
    }
}

/// Two models mixing the graph layers with their less common options
/// (`tests/data/keras/mix1.*`, `mix2.*`, `scripts/record_mixed_models.py`; the merged masks
/// Keras saves as `LogicalOr`/`ExpandDims`/`ZerosLike`/`Concatenate`/`Any` op layers, a
/// Concatenate along time, strided/dilated/grouped Conv1D, "same" pooling, every attention
/// score mode, Dot(normalize), ReLU options, token inputs), and recurrent layers taking
/// `initial_state` from the graph while their input is masked (`mix3.*`,
/// `masked_initial_state.*`, `scripts/record_initial_state_models.py`: Keras 3 runs such a
/// call unmasked): Keras's predictions on both paths.
#[test]
fn mixed_layer_models_match_keras_on_both_paths() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras");
    // (nested and time_distributed have tests of their own)
    for name in &common::RECORDED_GRAPHS[2..] {
        let mut model = KerasModel::load(&dir.join(format!("{name}.keras"))).unwrap();
        let inputs = common::model_inputs(&dir, name, model.inputs());
        let want = common::expected_outputs(&dir, name);
        let got = model.predict_inputs(&inputs).unwrap();
        let e = max_abs(&got, &want);
        assert!(e <= 1e-5, "{name} cpu: {e}");
        if let Some(ctx) = gpu("mixed_layer_models_match_keras_on_both_paths") {
            let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
            let got = g.forward_inputs(&inputs).unwrap();
            let e = max_abs(&got, &want);
            assert!(e <= 1e-4, "{name} gpu: {e}");
            assert_eq!(g.stats().submits, 1);
        }
    }
}

/// On the GPU (when there is one), `model` on `x` matches Keras's `want` within 1e-4 in one
/// submission.
fn gpu_matches_keras(
    test: &str,
    model: &KerasModel,
    x: ndarray::ArrayView3<f32>,
    want: &ArrayD<f32>,
) {
    if let Some(ctx) = gpu(test) {
        let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, model).unwrap();
        let got = g.forward(x, None, None).unwrap();
        let e = max_abs(&got, std::slice::from_ref(want));
        assert!(e <= 1e-4, "{test} gpu: {e}");
        assert_eq!(g.stats().submits, 1);
    }
}
