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

/// The layer keeps its buffers between calls: a larger call first, then the recorded one,
/// still gives Keras's values (nothing of the first call's is read by the second).
#[test]
fn mha_calls_of_other_shapes_do_not_disturb_each_other() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/mha");
    let mut model = KerasModel::load(&dir.join("self_masked.keras")).unwrap();
    let big = ArrayD::from_shape_fn(ndarray::IxDyn(&[5, 19, 8]), |i| {
        ((i[0] * 7 + i[1] * 3 + i[2]) % 11) as f32 / 5.0 - 1.0
    });
    let first = model.predict_inputs(&[big.clone().into()]).unwrap();
    let inputs: Vec<ModelInput> = common::model_inputs(&dir, "self_masked", model.inputs());
    let want: Vec<ArrayD<f32>> = common::expected_outputs(&dir, "self_masked");
    let got = model.predict_inputs(&inputs).unwrap();
    assert!(common::max_abs(&got, &want) <= 1e-5);
    // and the larger call again gives its first values
    assert_eq!(model.predict_inputs(&[big.into()]).unwrap(), first);
}
