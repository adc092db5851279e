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
