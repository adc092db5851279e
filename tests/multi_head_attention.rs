//! `MultiHeadAttention` in models recorded from Keras 3.15.1 (`tests/data/mha`,
//! `scripts/record_mha.py`): self-attention behind a mask with the scores returned, cross
//! attention with a causal mask, other key/value dims and no bias, an LSTM+MHA hybrid with a
//! separate key; on both paths, the GPU in one submission.

use lstm_wgpu::model::{KerasModel, ModelInput};
use ndarray::ArrayD;
use std::path::PathBuf;

mod common;

#[test]
fn mha_models_match_keras_on_both_paths() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/mha");
    for name in ["self_masked", "cross_causal", "lstm_mha"] {
        let mut model = KerasModel::load(&dir.join(format!("{name}.keras"))).unwrap();
        let inputs: Vec<ModelInput> = common::model_inputs(&dir, name, model.inputs());
        let want: Vec<ArrayD<f32>> = common::expected_outputs(&dir, name);
        common::check_both_paths(name, &mut model, &inputs, &want);
    }
}
