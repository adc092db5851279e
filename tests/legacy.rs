//! The other files Keras users have (`../shared/golden/keras-legacy`): sharded weights and
//! whole-model HDF5 files from Keras 2 and Keras 3's legacy writer.

use lstm_wgpu::model::KerasModel;
use ndarray::{Array3, ArrayD};
use ndarray_npy::read_npy;
use std::path::PathBuf;

mod common;
use common::{gpu, max_abs};

fn dir() -> PathBuf {
    common::golden_dir("keras-legacy", "LSTM_WGPU_LEGACY_DIR")
}

fn check(name: &str, mut model: KerasModel) {
    let x: Array3<f32> = read_npy(dir().join(format!("{name}.input.npy"))).unwrap();
    let want: ArrayD<f32> = read_npy(dir().join(format!("{name}.expected.npy"))).unwrap();
    let got = model.predict(x.view()).unwrap();
    let e = max_abs(&got, std::slice::from_ref(&want));
    assert!(e <= 1e-5, "{name} cpu: {e}");
    if let Some(ctx) = gpu(name) {
        let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
        let got = g.forward(x.view(), None, None).unwrap();
        let e = max_abs(&got, std::slice::from_ref(&want));
        assert!(e <= 1e-4, "{name} gpu: {e}");
    }
}

#[test]
fn sharded_weights_load_through_their_index() {
    let name = "k3_public_sharded";
    let model = KerasModel::load_weights(
        &dir().join(format!("{name}.keras")),
        &dir().join(format!("{name}.weights.json")),
    )
    .unwrap();
    check(name, model);
}

#[test]
fn a_missing_or_bad_shard_is_an_error_naming_it() {
    let tmp = std::env::temp_dir().join(format!("lstm-wgpu-shards-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let name = "k3_public_sharded";
    let index = std::fs::read_to_string(dir().join(format!("{name}.weights.json"))).unwrap();
    std::fs::write(tmp.join("m.weights.json"), &index).unwrap();
    // No shard beside the index: the error names the missing file.
    let config = dir().join(format!("{name}.keras"));
    let e = KerasModel::load_weights(&config, &tmp.join("m.weights.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("k3_public_sharded_00000.weights.h5"), "{e}");
    // A truncated shard: an error naming that shard.
    for k in 0..5 {
        let f = format!("{name}_0000{k}.weights.h5");
        let mut bytes = std::fs::read(dir().join(&f)).unwrap();
        if k == 1 {
            bytes.truncate(bytes.len() / 2);
        }
        std::fs::write(tmp.join(&f), bytes).unwrap();
    }
    let e = KerasModel::load_weights(&config, &tmp.join("m.weights.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("_00001.weights.h5"), "{e}");
    // An index naming a path outside its folder is refused.
    std::fs::write(
        tmp.join("bad.weights.json"),
        r#"{"weight_map": {"/layers/lstm/cell/vars": ["../x.weights.h5"]}}"#,
    )
    .unwrap();
    let e = KerasModel::load_weights(&config, &tmp.join("bad.weights.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("../x.weights.h5"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Whole-model HDF5 files (`model.save("m.h5")`) from Keras 2 and Keras 3's legacy writer:
/// the config from `model_config`, the weights from `model_weights/<layer>` in
/// `weight_names` order, Keras 2's `hard_sigmoid` for the Keras 2 file, `Dropout` as the
/// identity.
#[test]
fn whole_model_hdf5_files_match_keras() {
    for name in ["k3_public_whole_model", "k2_public_stacked_hard_sigmoid"] {
        let model = KerasModel::load(&dir().join(format!("{name}.h5"))).unwrap();
        check(name, model);
    }
}

/// The Keras 2 graphs (an encoder–decoder passing its states positionally, Keras 2's
/// `inbound_nodes` form; `Embedding(mask_zero)` → `Bidirectional(GRU)`): Keras's predictions
/// on the CPU path and on the GPU path (one submission).
#[test]
fn keras2_graph_models_match_keras_on_both_paths() {
    for name in ["k2_public_embedding_bigru", "k2_public_encoder_decoder"] {
        let mut model = KerasModel::load(&dir().join(format!("{name}.h5"))).unwrap();
        let inputs = common::model_inputs(&dir(), name, model.inputs());
        let want: ArrayD<f32> = read_npy(dir().join(format!("{name}.expected.npy"))).unwrap();
        let got = model.predict_inputs(&inputs).unwrap();
        let e = max_abs(&got, std::slice::from_ref(&want));
        assert!(e <= 1e-5, "{name} cpu: {e}");
        if let Some(ctx) = gpu(name) {
            let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
            let got = g.forward_inputs(&inputs).unwrap();
            let e = max_abs(&got, std::slice::from_ref(&want));
            assert!(e <= 1e-4, "{name} gpu: {e}");
            assert_eq!(g.stats().submits, 1);
        }
    }
}

/// Files laid out as standalone Keras 2.0.8, 2.1.6 and 2.2.4 wrote them
/// (`tests/data/keras22`, `scripts/record_keras22_files.py`: fixed-length string
/// attributes, those versions' configs — a bare-list `Sequential` in 2.0/2.1, a GRU without
/// `reset_after` in 2.0 — expected values from the tf-keras twin of each model).
#[test]
fn keras_2_0_to_2_2_files_match_keras() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras22");
    let read = |f: &str| -> ArrayD<f32> { read_npy(dir.join(f)).unwrap() };
    let run = |name: &str, mut model: KerasModel, input: lstm_wgpu::model::ModelInput| {
        let want = read(&format!("{name}.expected.npy"));
        let got = model.predict_inputs(std::slice::from_ref(&input)).unwrap();
        let e = max_abs(&got, std::slice::from_ref(&want));
        assert!(e <= 1e-5, "{name} cpu: {e}");
        if let Some(ctx) = gpu(name) {
            let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
            let got = g.forward_inputs(std::slice::from_ref(&input)).unwrap();
            let eg = max_abs(&got, std::slice::from_ref(&want));
            assert!(eg <= 1e-4, "{name} gpu: {eg}");
            println!("{name}: cpu {e:.1e}, gpu {eg:.1e}");
        }
    };
    let name = "k224_sequential_whole";
    let model = KerasModel::load(&dir.join(format!("{name}.h5"))).unwrap();
    run(name, model, read(&format!("{name}.input.npy")).into());
    let name = "k224_functional";
    let model = KerasModel::load_weights(
        &dir.join(format!("{name}.json")),
        &dir.join("k224_functional_weights.h5"),
    )
    .unwrap();
    run(name, model, read(&format!("{name}.input.npy")).into());
    for name in ["k216_sequential_list", "k208_sequential_list"] {
        let model = KerasModel::load(&dir.join(format!("{name}.h5"))).unwrap();
        let ids: ArrayD<i32> = read_npy(dir.join(format!("{name}.input.npy"))).unwrap();
        run(name, model, ids.into());
    }
}

/// Standalone Keras (2.3 and before) had no `zero_output_for_mask`: a masked
/// `Bidirectional(return_sequences=True)` repeats each direction's previous output at masked
/// steps (Keras 2.2.4's `Bidirectional.call` and `K.rnn`), where tf.keras (2.4+, `-tf`) and
/// Keras 3 give zeros.
#[test]
fn standalone_keras_bidirectional_repeats_outputs_at_masked_steps() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras22");
    let text = std::fs::read_to_string(dir.join("k224_functional.json")).unwrap();
    let weights = std::fs::read(dir.join("k224_functional_weights.h5")).unwrap();
    let x: ArrayD<f32> = read_npy(dir.join("k224_functional.input.npy")).unwrap();
    // row 1's steps 4 and 5 are all zeros: masked by the Masking layer
    assert!(x.slice(ndarray::s![1, 4.., ..]).iter().all(|v| *v == 0.0));
    let bidirectional_output = |version: &str| -> ArrayD<f32> {
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["keras_version"] = version.into();
        json["config"]["output_layers"] = serde_json::json!([["bidirectional_1", 0, 0]]);
        let mut model = KerasModel::from_config_and_weights(&json, &weights).unwrap();
        let cpu = model.predict_inputs(&[x.clone().into()]).unwrap().remove(0);
        if let Some(ctx) = gpu("standalone bidirectional") {
            let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
            let on_gpu = g.forward_inputs(&[x.clone().into()]).unwrap();
            let e = max_abs(&on_gpu, std::slice::from_ref(&cpu));
            assert!(e <= 1e-4, "{version} gpu: {e}");
        }
        cpu
    };
    let standalone = bidirectional_output("2.2.4");
    let tf_keras = bidirectional_output("2.4.0");
    // forward half (units 3): the last present step's output repeated, not zeros
    for t in [4, 5] {
        for k in 0..3 {
            assert_eq!(standalone[[1, t, k]], standalone[[1, 3, k]]);
            assert_eq!(tf_keras[[1, t, k]], 0.0);
        }
    }
    assert!((0..3).any(|k| standalone[[1, 3, k]] != 0.0));
    // present steps agree
    assert_eq!(
        standalone.slice(ndarray::s![.., ..4, ..]),
        tf_keras.slice(ndarray::s![.., ..4, ..])
    );
}
