//! The models people build around recurrent layers (`../shared/golden/keras-zoo`): every
//! model predicts like Keras on the CPU path, from the `.keras` file and from its config plus
//! `.weights.h5`.

use lstm_wgpu::model::KerasModel;
use ndarray::ArrayD;
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

/// Every zoo model runs on the GPU path as one submission with one readback and matches
/// Keras within 1e-4 (graphs, token inputs, initial_state wiring, merges, convolution,
/// pooling, normalization, attention).
#[test]
fn zoo_models_match_keras_on_the_gpu() {
    let Some(ctx) = common::gpu("zoo_models_match_keras_on_the_gpu") else {
        return;
    };
    let mut worst = (0.0f32, "");
    for name in RUNS {
        let model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
        let inputs = common::model_inputs(&dir(), name, model.inputs());
        let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx.clone(), &model)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = g
            .forward_inputs(&inputs)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = max_abs(&got, &expected(name));
        assert!(e <= 1e-4, "{name} gpu: {e}");
        assert_eq!((g.stats().submits, g.stats().readbacks), (1, 1), "{name}");
        if e > worst.0 {
            worst = (e, name);
        }
        // A second forward reuses the plan and gives the same bits.
        let again = g.forward_inputs(&inputs).unwrap();
        assert_eq!(got, again, "{name}");
    }
    println!("worst zoo error on the GPU: {:e} ({})", worst.0, worst.1);
}

/// Mutated configs of every zoo model and of the recorded graphs of `tests/data/keras` (a
/// key removed, a value replaced by null, a number, a string, a list, or another layer's
/// name): loading and predicting give an error or a result, never a panic, on the CPU and
/// (every fifth mutation) on the GPU.
#[test]
fn mutated_configs_never_panic() {
    use serde_json::Value;
    let mut outcomes = (0usize, 0usize);
    let data = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras");
    let ctx = common::gpu("mutated_configs_never_panic");
    let data_dir = |d: &str| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(d)
    };
    let cases = RUNS
        .iter()
        .map(|n| (dir(), *n))
        .chain(
            common::RECORDED_GRAPHS
                .into_iter()
                .map(|n| (data.clone(), n)),
        )
        .chain([
            (data_dir("rnn_cells"), "stacked_cells"),
            (data_dir("rnn_cells"), "single_cells"),
            (data_dir("mha"), "self_masked"),
            (data_dir("mha"), "cross_causal"),
            (data_dir("normalization"), "config_axes_invert"),
            (data_dir("crnn"), "ocr"),
            (data_dir("crnn"), "speech"),
            (data_dir("crnn"), "conv_options"),
            (data_dir("crnn"), "td_conv"),
            (data_dir("crnn"), "padding2d"),
            (data_dir("conv_lstm"), "options"),
            (data_dir("conv_lstm"), "next_frame"),
            (data_dir("conv_lstm"), "bidirectional"),
        ]);
    for (k_case, (dir, name)) in cases.enumerate() {
        let keras = std::fs::read(dir.join(format!("{name}.keras"))).unwrap();
        let members = lstm_wgpu::archive::members(&keras).unwrap();
        let member = |n: &str| members.iter().find(|(m, _)| m == n).unwrap().1;
        let config: Value = serde_json::from_slice(member("config.json")).unwrap();
        let weights = member("model.weights.h5");
        let model = KerasModel::from_config_and_weights(&config, weights).unwrap();
        let inputs = common::model_inputs(&dir, name, model.inputs());
        let mut mutator = common::Mutator::new(&config, 0x2545_F491_4F6C_DD1D ^ k_case as u64);
        let replacements = [
            None,
            Some(Value::Null),
            Some(serde_json::json!(-3)),
            Some(serde_json::json!("dense")),
            Some(serde_json::json!([])),
            Some(
                serde_json::json!({"class_name": "__keras_tensor__", "config": {"keras_history": ["missing", 7, 9]}}),
            ),
        ];
        for k_run in 0..40 {
            let Some((c, path)) = mutator.mutate(&config, &replacements) else {
                continue;
            };
            // (the GPU path too, on every fifth mutation: building and planning the graph)
            let on_gpu = ctx.as_ref().filter(|_| (k_case + k_run) % 5 == 0);
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let cpu = KerasModel::from_config_and_weights(&c, weights)
                    .and_then(|mut m| m.predict_inputs(&inputs).map(|_| m));
                if let (Ok(m), Some(ctx)) = (&cpu, on_gpu) {
                    let _ = lstm_wgpu::gpu::GpuNetwork::from_model(ctx.clone(), m)
                        .and_then(|mut g| g.forward_inputs(&inputs));
                }
                cpu.is_ok()
            }));
            match run {
                Ok(true) => outcomes.0 += 1,
                Ok(false) => outcomes.1 += 1,
                Err(_) => panic!("{name}: a config with {path:?} mutated panicked"),
            }
        }
    }
    println!("mutated configs: {} ran, {} errors", outcomes.0, outcomes.1);
    assert!(outcomes.1 > 0);
}

/// Outputs by name, as Keras's `model.output_names` names them.
#[test]
fn outputs_come_with_keras_output_names() {
    let name = "p_encoder_decoder_states";
    let mut model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
    assert_eq!(model.output_names(), ["dense_2", "lstm_2", "lstm_2"]);
    let inputs = common::model_inputs(&dir(), name, model.inputs());
    let named = model.predict_named(&inputs).unwrap();
    let want = expected(name);
    assert_eq!(named.len(), 3);
    let dense = &named.iter().find(|(n, _)| n == "dense_2").unwrap().1;
    assert!(max_abs(std::slice::from_ref(dense), &want[..1]) <= 1e-5);
    // the same names on the GPU
    if let Some(ctx) = common::gpu("outputs_come_with_keras_output_names") {
        let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &model).unwrap();
        let named = g.forward_named(&inputs).unwrap();
        let got: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(got, ["dense_2", "lstm_2", "lstm_2"]);
        assert!(max_abs(std::slice::from_ref(&named[0].1), &want[..1]) <= 1e-4);
    }
}

/// Bad inputs to a model on the GPU are errors naming the input: a wrong count (listing the
/// model's inputs), a wrong shape, floats for token ids (integers for floats are cast), token ids out of the vocabulary
/// (through `forward_inputs`).
#[test]
fn bad_gpu_inputs_are_errors_naming_the_input() {
    let Some(ctx) = common::gpu("bad_gpu_inputs_are_errors_naming_the_input") else {
        return;
    };
    use lstm_wgpu::model::ModelInput;
    use ndarray::{ArrayD, IxDyn};
    let merge = KerasModel::load(&dir().join("p_merge_layers.keras")).unwrap();
    let names: Vec<String> = merge.inputs().iter().map(|i| i.name.clone()).collect();
    let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx.clone(), &merge).unwrap();
    let a: ModelInput = ArrayD::<f32>::zeros(IxDyn(&[3, 7, 2])).into();
    let e = g
        .forward_inputs(std::slice::from_ref(&a))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&names[0]) && e.contains(&names[1]), "{e}");
    let wide: ModelInput = ArrayD::<f32>::zeros(IxDyn(&[3, 7, 5])).into();
    let e = g
        .forward_inputs(&[a.clone(), wide])
        .unwrap_err()
        .to_string();
    assert!(e.contains(&names[1]) && e.contains("[3, 7, 5]"), "{e}");
    // integers for a float input are cast, as Keras casts them: the same outputs
    let ints: ModelInput = ArrayD::<i32>::ones(IxDyn(&[3, 7, 2])).into();
    let floats: ModelInput = ArrayD::<f32>::ones(IxDyn(&[3, 7, 2])).into();
    let from_ints = g.forward_inputs(&[a.clone(), ints]).unwrap();
    let from_floats = g.forward_inputs(&[a, floats]).unwrap();
    assert_eq!(from_ints, from_floats);

    let emb = KerasModel::load(&dir().join("p_embedding_pooling.keras")).unwrap();
    let name = emb.inputs()[0].name.clone();
    let mut g = lstm_wgpu::gpu::GpuNetwork::from_model(ctx, &emb).unwrap();
    let mut ids = ArrayD::<i32>::zeros(IxDyn(&[5, 10]));
    ids[[2, 3]] = 40; // Embedding(40, 6): ids 0..40
    let e = g
        .forward_inputs(&[ids.clone().into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains(&name) && e.contains("40"), "{e}");
    ids[[2, 3]] = -1;
    let e = g.forward_inputs(&[ids.into()]).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("-1"), "{e}");
    let floats: ModelInput = ArrayD::<f32>::from_elem(IxDyn(&[5, 10]), 1.0).into();
    let e = g.forward_inputs(&[floats]).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("floats"), "{e}");
}

/// The zoo's models as trainable chains (`train::Sequential::from_model`): the chains (a
/// GRU without reset_after after an Embedding, with Dropout; a SimpleRNN autoencoder through
/// RepeatVector; a masked Bidirectional tagger; Conv1D, MaxPooling1D, BatchNormalization,
/// LayerNormalization and GlobalMaxPooling1D around an LSTM) predict like Keras and give
/// finite gradients; the graphs (several inputs or outputs, Keras's functional mask ops)
/// are refused with the reason.
#[test]
fn zoo_chains_load_for_training() {
    use lstm_wgpu::train::{Loss, Sequential};
    let trainable = [
        "p_embedding_gru",
        "p_simplernn_autoencoder",
        "p_masked_bigru_tagger",
        "p_conv_pool_norm",
    ];
    for name in RUNS {
        let model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
        let net = Sequential::<f64>::from_model(&model);
        if !trainable.contains(&name) {
            let e = net.expect_err(name).to_string();
            println!("{name}: refused: {e}");
            assert!(e.contains("not trainable yet"), "{name}: {e}");
            continue;
        }
        let net = net.unwrap_or_else(|e| panic!("{name}: {e}"));
        let inputs = common::model_inputs(&dir(), name, model.inputs());
        let x = match &inputs[0] {
            lstm_wgpu::model::ModelInput::F32(a) => a.mapv(f64::from),
            lstm_wgpu::model::ModelInput::I64(a) => a.mapv(|v| v as f64),
        };
        let got = net
            .predict(x.view())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = &expected(name)[0];
        let e = got
            .iter()
            .zip(want.iter())
            .map(|(a, &b)| (a - f64::from(b)).abs())
            .fold(0.0, f64::max);
        assert_eq!(got.shape(), want.shape(), "{name}");
        assert!(e <= 1e-5, "{name}: the chain predicts {e:e} from Keras");
        let y = want.mapv(f64::from);
        let g = net
            .gradients_in_training(x.view(), y.view(), Loss::MeanSquaredError, 1)
            .unwrap();
        assert!(g.loss.is_finite(), "{name}");
        assert!(
            g.weights.iter().all(|w| w.iter().all(|v| v.is_finite())),
            "{name}"
        );
        println!(
            "{name}: chain within {e:.1e} of Keras, {} weights",
            g.weights.len()
        );
        // through GpuSequential (a GRU without reset_after trains on the CPU there)
        if let Some(ctx) = common::gpu("zoo_chains_load_for_training") {
            let chain = Sequential::<f32>::from_model(&model).unwrap();
            let gpu = lstm_wgpu::train::GpuSequential::new(chain, ctx)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let xf = x.mapv(|v| v as f32);
            let got = gpu.predict(xf.view()).unwrap();
            let e = max_abs(&[got], std::slice::from_ref(want));
            assert!(e <= 1e-4, "{name}: GpuSequential predicts {e:e} from Keras");
            let g = gpu
                .gradients(xf.view(), want.view(), Loss::MeanSquaredError)
                .unwrap();
            assert!(g.loss.is_finite(), "{name}");
        }
    }
}
