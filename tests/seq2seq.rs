//! Seq2seq decoding (`lstm_wgpu::generate::seq2seq`) against the Python loop of Keras's
//! seq2seq example on inference models recorded from Keras 3.15.1 (`tests/data/seq2seq`,
//! `scripts/record_seq2seq.py`): a character-level LSTM pair fed one-hot tokens (greedy, and
//! a tempered draw with the loop's uniforms replayed, stopping at the stop token) and a
//! word-level Embedding+GRU pair fed token ids; the tokens must be identical on both paths.

use lstm_wgpu::generate::{seq2seq, seq2seq_gpu, Sampler, Seq2SeqOptions};
use lstm_wgpu::model::{KerasModel, ModelInput};
use ndarray::ArrayD;
use serde_json::Value;
use std::path::PathBuf;

mod common;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/seq2seq")
}

fn sampler(case: &Value) -> Sampler {
    let t = case["temperature"].as_f64().unwrap();
    if t == 0.0 {
        Sampler::greedy()
    } else {
        let u = case["uniforms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        Sampler::replay(t, None, u).unwrap()
    }
}

#[test]
fn seq2seq_tokens_equal_the_python_loops_on_both_paths() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("loops.json")).unwrap()).unwrap();
    let ctx = common::gpu("seq2seq_tokens_equal_the_python_loops_on_both_paths");
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let models = case["models"].as_str().unwrap();
        let load =
            |part: &str| KerasModel::load(&dir().join(format!("{models}_{part}.keras"))).unwrap();
        let (mut enc, mut dec) = (load("encoder"), load("decoder"));
        let path = dir().join(format!("{name}.input.npy"));
        let source: ModelInput = if models == "word" {
            ndarray_npy::read_npy::<_, ArrayD<i64>>(&path)
                .unwrap()
                .into()
        } else {
            ndarray_npy::read_npy::<_, ArrayD<f32>>(&path)
                .unwrap()
                .into()
        };
        let mut opts = Seq2SeqOptions::new(
            case["start"].as_i64().unwrap(),
            case["max_len"].as_u64().unwrap() as usize,
        );
        opts = opts.stop(case["stop"].as_i64().unwrap());
        let want: Vec<i64> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let source = [source];
        let got = seq2seq(&mut enc, &mut dec, &source, &opts, &mut sampler(case)).unwrap();
        assert_eq!(got, want, "{name} cpu");
        if let Some(ctx) = &ctx {
            let mut genc = lstm_wgpu::gpu::GpuNetwork::from_model(ctx.clone(), &enc).unwrap();
            let mut gdec = lstm_wgpu::gpu::GpuNetwork::from_model(ctx.clone(), &dec).unwrap();
            let got =
                seq2seq_gpu(&mut genc, &mut gdec, &source, &opts, &mut sampler(case)).unwrap();
            assert_eq!(got, want, "{name} gpu");
            // each decoder step (the last one's statistics) is one submission, and after the
            // first only the token goes up: the states are fed back on the GPU
            let st = gdec.stats();
            assert_eq!(st.submits, 1, "{name}");
            let token_bytes = if models == "word" { 4 } else { 4 * 13 };
            if want.len() > 1 {
                assert_eq!(st.bytes_uploaded, token_bytes, "{name}: {st:?}");
            }
        }
    }
}

/// A source batch of 2, a decoder for another encoder (its states don't fit) and a model that
/// reads no tokens are errors, not panics.
#[test]
fn bad_seq2seq_pairs_are_errors() {
    let load = |n: &str| KerasModel::load(&dir().join(format!("{n}.keras"))).unwrap();
    let (mut enc, mut dec) = (load("char_encoder"), load("char_decoder"));
    let two = ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 4, 11]));
    let opts = Seq2SeqOptions::new(1, 5);
    let err = seq2seq(
        &mut enc,
        &mut dec,
        &[two.into()],
        &opts,
        &mut Sampler::greedy(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("batch"), "{err}");
    // the GRU word decoder takes one state; the LSTM encoder gives two
    let mut word_dec = load("word_decoder");
    let one = ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 4, 11]));
    let err = seq2seq(
        &mut enc,
        &mut word_dec,
        &[one.clone().into()],
        &opts,
        &mut Sampler::greedy(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("decoder"), "{err}");
    // an encoder used as the decoder: its input is a sequence of one-hot rows (fine), but it
    // takes no states
    let mut enc2 = load("char_encoder");
    let err = seq2seq(
        &mut enc,
        &mut enc2,
        &[one.into()],
        &opts,
        &mut Sampler::greedy(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("decoder"), "{err}");
    // a start token outside the one-hot vocabulary
    let one = ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 4, 11]));
    let err = seq2seq(
        &mut enc,
        &mut dec,
        &[one.into()],
        &Seq2SeqOptions::new(13, 5),
        &mut Sampler::greedy(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("13"), "{err}");
}
