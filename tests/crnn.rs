//! Convolutional-recurrent models recorded from Keras 3.15.1 (`tests/data/crnn`,
//! `scripts/record_crnn.py`): the OCR example's CRNN (Conv2D, MaxPooling2D, Reshape into
//! Bidirectional LSTMs) with its CTC decoding, a DeepSpeech2-like model (strided Conv2D
//! without bias, BatchNormalization and ReLU on 4-D, Reshape with -1, Bidirectional GRU),
//! Conv2D and pooling options side by side, TimeDistributed(Conv2D) into an LSTM; on both
//! paths, the GPU in one submission.

use lstm_wgpu::ctc::{ctc_decode, CtcStrategy};
use lstm_wgpu::model::{KerasModel, ModelInput};
use ndarray::{Array2, ArrayD, Ix3};
use std::path::PathBuf;

mod common;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/crnn")
}

#[test]
fn crnn_models_match_keras_on_both_paths() {
    for name in ["ocr", "speech", "conv_options", "td_conv"] {
        let mut model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
        let inputs: Vec<ModelInput> = common::model_inputs(&dir(), name, model.inputs());
        let want: Vec<ArrayD<f32>> = common::expected_outputs(&dir(), name);
        common::check_both_paths(name, &mut model, &inputs, &want);
    }
}

/// The OCR model's text: `ctc_decode` of our predictions gives the labels that
/// `keras.ops.ctc_decode` gave for Keras's (greedy, and beam search of width 4).
#[test]
fn ocr_predictions_decode_to_keras_labels() {
    let mut model = KerasModel::load(&dir().join("ocr.keras")).unwrap();
    let inputs = common::model_inputs(&dir(), "ocr", model.inputs());
    let probs = model.predict_inputs(&inputs).unwrap().remove(0);
    let probs = probs.into_dimensionality::<Ix3>().unwrap();
    let lengths = vec![probs.dim().1; probs.dim().0];
    for (strategy, file) in [
        (CtcStrategy::greedy(), "ocr.greedy.npy"),
        (CtcStrategy::beam_search(4, 1), "ocr.beam.npy"),
    ] {
        let want: Array2<i64> = ndarray_npy::read_npy(dir().join(file)).unwrap();
        let got = ctc_decode(probs.view(), &lengths, strategy, 0).unwrap();
        assert_eq!(
            got.padded().index_axis(ndarray::Axis(0), 0),
            want,
            "{strategy:?}"
        );
    }
}
