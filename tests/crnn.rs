//! Convolutional-recurrent models recorded from Keras 3.15.1 (`tests/data/crnn`,
//! `scripts/record_crnn.py`): the OCR example's CRNN (Conv2D, MaxPooling2D, Reshape into
//! Bidirectional LSTMs) with its CTC decoding, a DeepSpeech2-like model (strided Conv2D
//! without bias, BatchNormalization and ReLU on 4-D, Reshape with -1, Bidirectional GRU),
//! Conv2D and pooling options side by side, TimeDistributed(Conv2D) into an LSTM,
//! ZeroPadding2D/Cropping2D/UpSampling2D in each config form; on both paths, the GPU in one
//! submission.

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
    for name in ["ocr", "speech", "conv_options", "td_conv", "padding2d"] {
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

/// Images over the binding limit run in batch chunks with the same bits; one image whose
/// feature map alone is over it is an error naming the layer and the limit, not a panic.
#[test]
fn crnn_over_the_binding_limit() {
    let Some(ctx) = common::gpu("crnn_over_the_binding_limit") else {
        return;
    };
    let mut model = KerasModel::load(&dir().join("ocr.keras")).unwrap();
    let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[64, 32, 16, 1]), |i| {
        ((i[0] * 31 + i[1] * 7 + i[2]) % 17) as f32 / 17.0
    });
    let inputs = [ModelInput::from(x)];
    let cpu = model.predict_inputs(&inputs).unwrap();
    let mut whole = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
    let want = whole.forward_inputs(&inputs).unwrap();
    assert_eq!(whole.stats().batch_chunks, 0);
    let small = lstm_wgpu::gpu::GpuContext::with_options(
        &lstm_wgpu::gpu::GpuOptions::from_env()
            .allow_software(true)
            .max_binding_size(256 << 10),
    )
    .unwrap();
    let mut chunked = lstm_wgpu::gpu::GpuNetwork::from_model(small.clone(), &model).unwrap();
    let got = chunked.forward_inputs(&inputs).unwrap();
    assert!(chunked.stats().batch_chunks >= 2, "{:?}", chunked.stats());
    assert_eq!(got, want, "batch chunks give the same bits");
    let e = common::max_abs(&got, &cpu);
    assert!(e <= 1e-4, "gpu vs cpu: {e}");

    // The speech model takes any length: 3,000 frames of one row (281 KiB) are past a
    // 256 KiB binding.
    let speech = KerasModel::load(&dir().join("speech.keras")).unwrap();
    let long = ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 3000, 24]), |i| {
        ((i[1] * 7 + i[2]) % 13) as f32 / 6.5 - 1.0
    });
    let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(small, &speech).unwrap();
    let err = g.forward_inputs(&[long.into()]).unwrap_err();
    assert!(
        matches!(err, lstm_wgpu::LstmError::Limit { .. }) && err.to_string().contains("input"),
        "{err}"
    );
}

/// The OCR CRNN in training (`train::Functional`): the trainable graph predicts Keras's
/// outputs and has finite, nonzero gradients (MSE on the outputs here; `graph_ctc` in
/// tests/graph_training.rs trains one under the CTC loss). A grouped Conv2D is refused by
/// name.
#[test]
fn crnn_models_build_for_training() {
    use lstm_wgpu::train::Functional;
    let model = KerasModel::load(&dir().join("conv_options.keras")).unwrap();
    let e = Functional::<f32>::from_model(&model)
        .unwrap_err()
        .to_string();
    assert!(e.contains("groups") && e.contains("grouped"), "{e}");
    common::check_trainable(&dir(), "ocr", 1e-4);
}
