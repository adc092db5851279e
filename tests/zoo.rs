//! The models people build around recurrent layers (`../shared/golden/keras-zoo`): every
//! model predicts like Keras on the CPU path, from the `.keras` file and from its config plus
//! `.weights.h5`.

use lstm_wgpu::model::KerasModel;
use ndarray::ArrayD;
use ndarray_npy::read_npy;
use std::path::PathBuf;

mod common;
use common::max_abs;

fn dir() -> PathBuf {
    common::golden_dir("keras-zoo", "LSTM_WGPU_ZOO_DIR")
}

fn expected(name: &str) -> Vec<ArrayD<f32>> {
    common::expected_outputs(&dir(), name)
}

const RUNS: [&str; 10] = [
    "p_embedding_pooling",
    "p_embedding_gru",
    "p_encoder_decoder_states",
    "p_gru_encoder_decoder",
    "p_simplernn_autoencoder",
    "p_merge_layers",
    "p_functional_masking_states",
    "p_masked_bigru_tagger",
    "p_conv_pool_norm",
    "p_attention_layers",
];

#[test]
fn zoo_models_match_keras_on_the_cpu() {
    let mut worst = (0.0f32, "");
    for name in RUNS {
        for weights in [false, true] {
            let keras = dir().join(format!("{name}.keras"));
            let mut model = if weights {
                KerasModel::load_weights(&keras, &dir().join(format!("{name}.weights.h5")))
            } else {
                KerasModel::load(&keras)
            }
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let inputs = common::model_inputs(&dir(), name, model.inputs());
            let got = model
                .predict_inputs(&inputs)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let e = max_abs(&got, &expected(name));
            assert!(e <= 1e-5, "{name}: {e}");
            if e > worst.0 {
                worst = (e, name);
            }
        }
    }
    println!("worst zoo error on the CPU: {:e} ({})", worst.0, worst.1);
}

/// The zoo models that are chains the GPU path runs (Masking, recurrent layers,
/// Bidirectional, Dense and TimeDistributed(Dense)) match Keras there too, in one submission.
#[test]
fn zoo_chains_match_keras_on_the_gpu() {
    let Some(ctx) = common::gpu("zoo_chains_match_keras_on_the_gpu") else {
        return;
    };
    let mut ran = Vec::new();
    for name in RUNS {
        let model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
        if model.chain_error().is_some() {
            continue;
        }
        let x: ndarray::Array3<f32> = read_npy(dir().join(format!("{name}.input.npy"))).unwrap();
        let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx.clone(), &model).unwrap();
        let got = g.forward(x.view(), None, None).unwrap();
        let e = max_abs(&got, &expected(name));
        assert!(e <= 1e-4, "{name} gpu: {e}");
        assert_eq!(g.stats().submits, 1);
        ran.push(name);
    }
    assert!(ran.contains(&"p_masked_bigru_tagger"), "{ran:?}");
}
