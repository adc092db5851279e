//! `ConvLSTM2D` and `ConvLSTM1D` in models recorded from Keras 3.15.1
//! (`tests/data/conv_lstm`, `scripts/record_conv_lstm.py`): same and valid padding, strides,
//! an even kernel, dilation, go_backwards, states returned, relu/hard_sigmoid, no bias, a
//! timestep mask passed as `mask=`, initial states from another layer, stacked layers with
//! BatchNormalization and a Conv2D head; on both paths, the GPU in one submission.

use lstm_wgpu::model::{KerasModel, ModelInput};
use ndarray::ArrayD;
use std::path::PathBuf;

mod common;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/conv_lstm")
}

#[test]
fn conv_lstm_models_match_keras_on_both_paths() {
    for name in ["seq_same", "options", "conv1d_masked", "next_frame"] {
        let mut model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
        let inputs: Vec<ModelInput> = common::model_inputs(&dir(), name, model.inputs());
        let want: Vec<ArrayD<f32>> = common::expected_outputs(&dir(), name);
        common::check_both_paths(name, &mut model, &inputs, &want);
    }
}
