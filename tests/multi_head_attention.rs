//! `MultiHeadAttention` in models recorded from Keras 3.15.1 (`tests/data/mha`,
//! `scripts/record_mha.py`): self-attention behind a mask with the scores returned, cross
//! attention with a causal mask, other key/value dims and no bias, an LSTM+MHA hybrid with a
//! separate key; on both paths, the GPU in one submission.

use lstm_wgpu::model::{KerasModel, ModelInput};
use ndarray::ArrayD;
use std::path::PathBuf;

mod common;
use common::{gpu, max_abs};

#[test]
fn mha_models_match_keras_on_both_paths() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/mha");
    for name in ["self_masked", "cross_causal", "lstm_mha"] {
        let mut model = KerasModel::load(&dir.join(format!("{name}.keras"))).unwrap();
        let inputs: Vec<ModelInput> = common::model_inputs(&dir, name, model.inputs());
        let want: Vec<ArrayD<f32>> = common::expected_outputs(&dir, name);
        let got = model.predict_inputs(&inputs).unwrap();
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let e = max_abs(std::slice::from_ref(g), std::slice::from_ref(w));
            assert!(e <= 1e-5, "{name} cpu output {k}: {e}\n{g:?}\n{w:?}");
        }
        let e = max_abs(&got, &want);
        if let Some(ctx) = gpu(name) {
            let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
            let on_gpu = g.forward_inputs(&inputs).unwrap();
            let eg = max_abs(&on_gpu, &want);
            assert!(eg <= 1e-4, "{name} gpu: {eg}");
            assert_eq!(g.stats().submits, 1);
            println!("{name}: cpu {e:.1e}, gpu {eg:.1e}");
        }
    }
}
