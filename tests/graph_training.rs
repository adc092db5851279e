//! Functional graphs trained against Keras 3.15.1 (`scripts/record_graph_training.py`,
//! `tests/data/training/graph_*`): the ten keras-zoo models (several inputs and outputs,
//! `initial_state` from an encoder, `return_state` outputs, merges, attention, the op layers
//! of a functional `Masking`, token inputs, BatchNormalization) and `graph_mix` (a shared
//! LSTM called twice, Concatenate along time, a GRU's state into a SimpleRNN's
//! `initial_state`, concat-score Attention with returned scores, causal AdditiveAttention,
//! every merge, four outputs with weighted losses) and `graph_reg` (L1, L2 and L1L2 weight
//! regularizers on an Embedding, LSTM, Conv1D, LayerNormalization, Bidirectional(GRU),
//! BatchNormalization, TimeDistributed(Dense) and Dense; activity regularizers on an LSTM, a
//! Dense, a GRU's returned state and an ActivityRegularization layer) and `graph_frozen` (frozen Embedding,
//! regularized LSTM, Bidirectional(GRU) and BatchNormalization beside trainable layers) and
//! `graph_constraint` (MaxNorm, NonNeg, UnitNorm and MinMaxNorm on every kind of weight, on
//! one axis, several, the last and all; a frozen layer's constraint left alone) and
//! `graph_dot` (Luong attention written with Dot layers, a cosine similarity by a normalized
//! Dot) and `graph_logits` (cross-entropy outputs taken from their logits that other layers
//! and an activity regularizer read too) and `graph_shared_bn` (BatchNormalization layers
//! called twice in a step, their moving statistics moved in each call in Keras's run order)
//! and `graph_orthogonal` (OrthogonalRegularizer on weights, rows and columns, and as
//! activity regularizers) and `graph_bidi_activity` (activity regularizers inside a
//! Bidirectional's directions and a TimeDistributed, which Keras 3 leaves unapplied):
//! the loss and its gradients w.r.t. every
//! weight and input as `tf.GradientTape` gives them (f64 ≤ 1e-10, f32 ≤ 1e-5), and
//! `model.fit` runs of 20 Adam steps matched weight for weight (≤ 1e-4).

use lstm_wgpu::model::KerasModel;
use lstm_wgpu::train::{
    FitOptions, Functional, GpuFunctional, GraphGradients, GraphLayer, History, Loss, Losses,
    Optimizer, TrainLayer,
};
use lstm_wgpu::Cell;
use lstm_wgpu::{Element, LstmError};
use ndarray::{ArrayD, ArrayViewD};
use ndarray_npy::ReadNpyExt;
use std::collections::HashMap;
use std::path::PathBuf;

mod common;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/training")
}

/// The arrays of `NAME.npz` as `T`.
fn npz<T: Element>(name: &str) -> HashMap<String, ArrayD<T>> {
    let bytes = std::fs::read(dir().join(format!("{name}.npz"))).unwrap();
    let mut out = HashMap::new();
    for (member, data) in lstm_wgpu::archive::members(&bytes).unwrap() {
        let key = member.trim_end_matches(".npy").to_string();
        let a: ArrayD<T> = if let Ok(a) = ArrayD::<f64>::read_npy(std::io::Cursor::new(data)) {
            a.mapv(T::from_f64)
        } else {
            let a = ArrayD::<f32>::read_npy(std::io::Cursor::new(data))
                .unwrap_or_else(|e| panic!("{name}/{member}: {e}"));
            a.mapv(|v| T::from_f64(f64::from(v)))
        };
        out.insert(key, a);
    }
    out
}

fn meta(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir().join(format!("{name}.json"))).unwrap()).unwrap()
}

fn worst<T: Element>(a: &ArrayD<T>, b: &ArrayD<T>, what: &str) -> f64 {
    assert_eq!(a.shape(), b.shape(), "{what}");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.to_f64() - y.to_f64()).abs())
        .fold(0.0, f64::max)
}

/// The `.keras` file a case names (`zoo:NAME` or a file here).
fn model_path(m: &serde_json::Value) -> PathBuf {
    let src = m["model"].as_str().unwrap();
    match src.strip_prefix("zoo:") {
        Some(name) => {
            common::golden_dir("keras-zoo", "KERAS_ZOO_DIR").join(format!("{name}.keras"))
        }
        None => dir().join(src),
    }
}

fn keras_model(m: &serde_json::Value) -> KerasModel {
    KerasModel::load(&model_path(m)).unwrap()
}

fn losses(m: &serde_json::Value) -> Losses {
    let per: Vec<Option<Loss>> = m["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().map(|l| Loss::from_keras(l).unwrap()))
        .collect();
    let w: Vec<f64> = m["loss_weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    Losses::new(per).weights(&w)
}

fn indexed<T: Clone>(a: &HashMap<String, T>, prefix: &str) -> Vec<T> {
    (0..)
        .map_while(|k| a.get(&format!("{prefix}{k}")).cloned())
        .collect()
}

/// The graph of case `name` with the case's weights and state.
fn net<T: Element>(name: &str, a: &HashMap<String, ArrayD<T>>) -> Functional<T> {
    let mut net = Functional::<T>::from_model(&keras_model(&meta(name))).unwrap();
    // the file's weights are the case's (in its order: Keras's trainable_weights)
    let w = indexed(a, "w");
    for (k, (got, want)) in net.weights().iter().zip(&w).enumerate() {
        let e = worst(got, want, &format!("{name} w{k}"));
        assert!(e <= 1e-6, "{name}: weight {k} is not the file's ({e:e})");
    }
    net.set_weights(&w).unwrap();
    net.set_state(&indexed(a, "s")).unwrap();
    net
}

/// A graph's predictions and gradients on a batch, on some path.
type Run<'a, T> = &'a dyn Fn(
    Functional<T>,
    &[ArrayViewD<'_, T>],
    &[ArrayViewD<'_, T>],
    &Losses,
) -> (Vec<ArrayD<T>>, GraphGradients<T>);

fn grads_case<T: Element>(name: &str, tol: f64) -> f64 {
    grads_case_on(name, tol, &|net: Functional<T>,
                               xv: &[ArrayViewD<'_, T>],
                               yv: &[ArrayViewD<'_, T>],
                               l: &Losses| {
        (net.predict(xv).unwrap(), net.gradients(xv, yv, l).unwrap())
    })
}

fn grads_case_on<T: Element>(name: &str, tol: f64, run: Run<'_, T>) -> f64 {
    let a = npz::<T>(name);
    let net = net::<T>(name, &a);
    let xs = indexed(&a, "x");
    let ys = indexed(&a, "y");
    let xv: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let yv: Vec<_> = ys.iter().map(|y| y.view()).collect();
    let (preds, g) = run(net, &xv, &yv, &losses(&meta(name)));
    // (what is past the tolerance, for the failure message)
    let mut past = Vec::new();
    let mut w = 0.0f64;
    for (k, p) in preds.iter().enumerate() {
        let e = worst(p, &a[&format!("pred{k}")], &format!("{name} pred{k}"));
        if e > tol {
            past.push(format!("pred{k} {e:.1e}"));
        }
        w = w.max(e);
    }
    w = w.max((g.loss.to_f64() - a["loss"].iter().next().unwrap().to_f64()).abs());
    let want = indexed(&a, "grad");
    assert_eq!(g.weights.len(), want.len(), "{name}: weight count");
    for (k, (got, want)) in g.weights.iter().zip(&want).enumerate() {
        let e = worst(got, want, &format!("{name} grad{k}"));
        if e > tol {
            past.push(format!("grad{k} {:?} {e:.1e}", got.shape()));
        }
        w = w.max(e);
    }
    for (k, got) in g.inputs.iter().enumerate() {
        w = w.max(worst(
            got,
            &a[&format!("grad_x{k}")],
            &format!("{name} grad_x{k}"),
        ));
    }
    println!("{name}: worst {w:.1e} (loss {})", g.loss);
    assert!(w <= tol, "{name}: {w:e} > {tol:e} ({})", past.join(", "));
    w
}

const MODELS: [&str; 24] = [
    "p_embedding_pooling",
    "p_embedding_gru",
    "p_encoder_decoder_states",
    "p_gru_encoder_decoder",
    "p_simplernn_autoencoder",
    "p_merge_layers",
    "p_conv_pool_norm",
    "p_attention_layers",
    "p_functional_masking_states",
    "p_masked_bigru_tagger",
    "graph_mix",
    "graph_reg",
    "graph_frozen",
    "graph_constraint",
    "graph_dot",
    "graph_logits",
    "graph_shared_bn",
    "graph_orthogonal",
    "graph_bidi_activity",
    "graph_mha",
    "graph_attn_dropout",
    "graph_conv_lstm",
    "graph_conv2d",
    "graph_ctc",
];

/// Models recorded in float32 only: Keras 3.15.1's OrthogonalRegularizer fails in a float64
/// model (its factor is a float32 tensor), and it computes a float64 model's CTC loss in
/// float32 (`tf.nn.ctc_loss` refuses float64; `ctc_loss`'s own test checks the f64 loss by
/// brute force and central differences).
const F32_ONLY: [&str; 3] = ["graph_orthogonal", "graph_bidi_activity", "graph_ctc"];

#[test]
fn graph_gradients_match_gradient_tape() {
    let (mut w64, mut w32) = (0.0f64, 0.0f64);
    for m in MODELS {
        if !F32_ONLY.contains(&m) {
            w64 = w64.max(grads_case::<f64>(&format!("graph_grads_{m}_f64"), 1e-10));
        }
        w32 = w32.max(grads_case::<f32>(&format!("graph_grads_{m}_f32"), 1e-5));
    }
    println!("graph gradients vs Keras: f64 worst {w64:.1e}, f32 worst {w32:.1e}");
}

/// Attention and MultiHeadAttention with dropout in training mode: Keras's tape over
/// `model(x, training=True)` with the crate's masks for the case's seed given to its layers
/// (`scripts/record_graph_training.py`, `inject_attention_masks`).
#[test]
fn graph_training_mode_gradients_match_gradient_tape() {
    // (`predict` is inference mode: the recorded training-mode predictions stand in for it,
    // and the training-mode forward is checked through the loss)
    let run = |name: &str, tol: f64| -> f64 {
        let seed = meta(name)["training_seed"]
            .as_u64()
            .expect("a training-mode case");
        if name.ends_with("_f64") {
            grads_case_on::<f64>(name, tol, &|net, xv, yv, l| {
                let g = net.gradients_in_training(xv, yv, l, seed).unwrap();
                (indexed(&npz::<f64>(name), "pred"), g)
            })
        } else {
            grads_case_on::<f32>(name, tol, &|net, xv, yv, l| {
                let g = net.gradients_in_training(xv, yv, l, seed).unwrap();
                (indexed(&npz::<f32>(name), "pred"), g)
            })
        }
    };
    let w64 = run("graph_train_grads_graph_attn_dropout_f64", 1e-10);
    let w32 = run("graph_train_grads_graph_attn_dropout_f32", 1e-5);
    println!("attention dropout in training vs Keras: f64 worst {w64:.1e}, f32 worst {w32:.1e}");
    // the same seed draws the same masks; another seed others (the dropout is live)
    let name = "graph_train_grads_graph_attn_dropout_f64";
    let a = npz::<f64>(name);
    let xs = indexed(&a, "x");
    let ys = indexed(&a, "y");
    let xv: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let yv: Vec<_> = ys.iter().map(|y| y.view()).collect();
    let l = losses(&meta(name));
    let g = |seed| {
        net::<f64>(name, &a)
            .gradients_in_training(&xv, &yv, &l, seed)
            .unwrap()
            .loss
    };
    assert_eq!(g(2026), g(2026));
    assert!((g(2026) - g(7)).abs() > 1e-3, "{} vs {}", g(2026), g(7));
}

/// Trains a graph on the case's data: the history, the weights and the state after.
type Fit<'a> = &'a dyn Fn(
    Functional<f32>,
    &[ArrayViewD<'_, f32>],
    &[ArrayViewD<'_, f32>],
    &Losses,
    &FitOptions,
    &mut Optimizer,
) -> (History, Vec<ArrayD<f32>>, Vec<ArrayD<f32>>);

/// The recorded 20-step fits, each trained by `fit` and compared with Keras's weights.
fn fit_cases(fit: Fit<'_>, path: &str) {
    for m in MODELS {
        let name = format!("graph_fit_{m}");
        if !dir().join(format!("{name}.npz")).exists() {
            // (models with Dropout: Keras's masks are TensorFlow's, not reproducible)
            continue;
        }
        let a = npz::<f32>(&name);
        let meta = meta(&name);
        let net = net::<f32>(&name, &a);
        let xs = indexed(&a, "x");
        let ys = indexed(&a, "y");
        let xv: Vec<_> = xs.iter().map(|x| x.view()).collect();
        let yv: Vec<_> = ys.iter().map(|y| y.view()).collect();
        let o = &meta["optimizer"];
        let mut opt = Optimizer::from_keras(o["kind"].as_str().unwrap(), o).unwrap();
        let options = FitOptions::new(
            Loss::MeanSquaredError,
            meta["batch_size"].as_u64().unwrap() as usize,
            meta["epochs"].as_u64().unwrap() as usize,
        );
        let (h, weights, state) = fit(net, &xv, &yv, &losses(&meta), &options, &mut opt);
        assert!(opt.iterations() >= 20, "{name}");
        let mut w = 0.0f64;
        let mut past = Vec::new();
        for (k, (got, want)) in weights.iter().zip(indexed(&a, "final")).enumerate() {
            let e = worst(got, &want, &format!("{name} final{k}"));
            if e > 1e-4 {
                past.push(format!("final{k} {:?} {e:.1e}", got.shape()));
            }
            w = w.max(e);
        }
        for (k, (got, want)) in state.iter().zip(indexed(&a, "final_state")).enumerate() {
            w = w.max(worst(got, &want, &format!("{name} final_state{k}")));
        }
        let l = h
            .epoch_loss
            .iter()
            .zip(a["epoch_loss"].iter())
            .map(|(x, y)| (x - y.to_f64()).abs())
            .fold(0.0, f64::max);
        let moved = indexed(&a, "w")
            .iter()
            .zip(indexed(&a, "final"))
            .map(|(x, y)| worst(x, &y, &name))
            .fold(0.0, f64::max);
        println!("{path} {name}: weights {w:.1e}, epoch losses {l:.1e}, Keras moved {moved:.1e}");
        assert!(
            w <= 1e-4 && l <= 1e-4,
            "{path} {name}: weights {w:e}, losses {l:e} ({})",
            past.join(", ")
        );
        assert!(moved > 1e-3, "{name}: Keras's weights moved {moved}");
    }
}

#[test]
fn graph_fit_matches_keras_after_20_steps() {
    fit_cases(
        &|mut net, xv, yv, l, options, opt| {
            let h = net.fit(xv, yv, l, options, opt).unwrap();
            (h, net.weights(), net.state())
        },
        "CPU",
    );
}

/// The same gradients and fits with the recurrent calls on the GPU (lavapipe in CI): within
/// the GPU's 1e-4 of Keras; after a fit the device holds the trained weights.
#[test]
fn gpu_graph_gradients_and_fit_match_keras() {
    let Some(ctx) = common::gpu("gpu_graph_gradients_and_fit_match_keras") else {
        return;
    };
    let mut w32 = 0.0f64;
    let gpu_layers = std::cell::Cell::new(0);
    for m in MODELS {
        let e = grads_case_on::<f32>(&format!("graph_grads_{m}_f32"), 1e-4, &|net, xv, yv, l| {
            // the recurrent layers the GPU kernels train (not a GRU without reset_after)
            let on_gpu =
                |c: &lstm_wgpu::LstmConfig| !matches!(c.cell, Cell::Gru { reset_after: false });
            let want: Vec<String> = net
                .layers
                .iter()
                .filter(|(_, l)| match l {
                    GraphLayer::One(TrainLayer::Recurrent { config, .. }) => on_gpu(config),
                    GraphLayer::One(TrainLayer::Bidirectional {
                        forward, backward, ..
                    }) => on_gpu(&forward.0) || on_gpu(&backward.0),
                    _ => false,
                })
                .map(|(n, _)| n.clone())
                .collect();
            let gpu = GpuFunctional::new(net, ctx.clone()).unwrap();
            assert_eq!(gpu.gpu_layers(), want, "{m}: the layers on the GPU");
            gpu_layers.set(gpu_layers.get() + want.len());
            (gpu.predict(xv).unwrap(), gpu.gradients(xv, yv, l).unwrap())
        });
        w32 = w32.max(e);
    }
    let gpu_layers = gpu_layers.get();
    assert!(gpu_layers > 0);
    println!("GPU graph gradients vs Keras: f32 worst {w32:.1e} ({gpu_layers} layers on the GPU)");
    fit_cases(
        &|net, xv, yv, l, options, opt| {
            let mut gpu = GpuFunctional::new(net, ctx.clone()).unwrap();
            let h = gpu.fit(xv, yv, l, options, opt).unwrap();
            let cpu = gpu.functional().predict(xv).unwrap();
            for (k, (g, c)) in gpu.predict(xv).unwrap().iter().zip(&cpu).enumerate() {
                let d = worst(g, c, "after fit");
                assert!(d <= 1e-4, "GPU: output {k} after fit differs by {d:e}");
            }
            (h, gpu.functional().weights(), gpu.functional().state())
        },
        "GPU",
    );
}

/// Bad calls are errors that say what was wrong.
#[test]
fn graph_training_errors_name_the_argument() {
    let name = "graph_grads_graph_mix_f64";
    let a = npz::<f64>(name);
    let net = net::<f64>(name, &a);
    let xs = indexed(&a, "x");
    let ys = indexed(&a, "y");
    let xv: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let yv: Vec<_> = ys.iter().map(|y| y.view()).collect();
    let l = losses(&meta(name));
    // one input missing
    let e = net.gradients(&xv[..1], &yv, &l).unwrap_err();
    assert!(e.to_string().contains("inputs"), "{e}");
    // a target of the wrong shape names its output
    let mut bad = ys.clone();
    bad[1] = ArrayD::zeros(ndarray::IxDyn(&[4, 5, 2]));
    let bv: Vec<_> = bad.iter().map(|y| y.view()).collect();
    let e = net.gradients(&xv, &bv, &l).unwrap_err();
    assert!(
        matches!(&e, LstmError::ShapeMismatch { what, .. } if what.contains("output 1")),
        "{e}"
    );
    // fewer losses than outputs
    let e = net
        .gradients(&xv, &yv, &Losses::new(vec![Some(Loss::MeanSquaredError)]))
        .unwrap_err();
    assert!(e.to_string().contains("4 outputs"), "{e}");
    // an output without a loss reads no target and adds nothing
    let mut only = l.clone();
    only.per_output[3] = None;
    let g0 = net.gradients(&xv, &yv, &only).unwrap();
    let mut w = l.clone();
    w.per_output[3] = w.per_output[3].map(|(loss, _)| (loss, 0.0));
    let g1 = net.gradients(&xv, &yv, &w).unwrap();
    assert!((g0.loss - g1.loss).abs() < 1e-12);
    for (x, y) in g0.weights.iter().zip(&g1.weights) {
        assert!(worst(x, y, "weights") < 1e-12);
    }
    // regularizers the graph does not apply are refused by key and layer, never dropped
    let bytes = std::fs::read(dir().join("graph_reg.keras")).unwrap();
    let members = lstm_wgpu::archive::members(&bytes).unwrap();
    let member = |n: &str| members.iter().find(|(m, _)| m == n).unwrap().1.to_vec();
    let config: serde_json::Value = serde_json::from_slice(&member("config.json")).unwrap();
    let h5 = member("model.weights.h5");
    let refused = |layer: &str, key: &str, value: serde_json::Value| {
        let mut c = config.clone();
        for l in c["config"]["layers"].as_array_mut().unwrap() {
            if l["config"]["name"] == layer {
                l["config"][key] = value.clone();
            }
        }
        let model = KerasModel::from_config_and_weights(&c, &h5).unwrap();
        let e = Functional::<f32>::from_model(&model)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(layer), "{layer}.{key}: {e}");
        e
    };
    let e = refused(
        "lstm",
        "kernel_regularizer",
        serde_json::json!({"class_name": "MyRegularizer", "config": {"factor": 0.01}}),
    );
    assert!(e.contains("MyRegularizer"), "{e}");
    // OrthogonalRegularizer takes rank 2 (Keras raises in the call)
    let e = refused(
        "lstm",
        "bias_regularizer",
        serde_json::json!({"class_name": "OrthogonalRegularizer", "config": {"factor": 0.01}}),
    );
    assert!(e.contains("rank-2"), "{e}");
    // constraints of another class or with an axis the weight lacks
    let e = refused(
        "dense_1",
        "kernel_constraint",
        serde_json::json!({"class_name": "SpectralNorm", "config": {}}),
    );
    assert!(e.contains("SpectralNorm"), "{e}");
    let e = refused(
        "lstm",
        "recurrent_constraint",
        serde_json::json!({"class_name": "MaxNorm", "config": {"max_value": 1.0, "axis": -3}}),
    );
    assert!(e.contains("out of range"), "{e}");
    // a TimeDistributed's inner layer's activity regularizer: Keras 3 runs the inner layer's
    // call, which does not apply it; the loss stays the file's
    let mut c = config.clone();
    for l in c["config"]["layers"].as_array_mut().unwrap() {
        if l["config"]["name"] == "time_distributed" {
            l["config"]["layer"]["config"]["activity_regularizer"] =
                serde_json::json!({"class_name": "L2", "config": {"l2": 0.01}});
        }
    }
    let model = KerasModel::from_config_and_weights(&c, &h5).unwrap();
    let mut with_td = Functional::<f32>::from_model(&model).unwrap();
    let case = "graph_grads_graph_reg_f32";
    let a = npz::<f32>(case);
    let base = self::net::<f32>(case, &a);
    with_td.set_weights(&base.weights()).unwrap();
    with_td.set_state(&base.state()).unwrap();
    let xs = indexed(&a, "x");
    let ys = indexed(&a, "y");
    let xv: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let yv: Vec<_> = ys.iter().map(|y| y.view()).collect();
    let l = losses(&meta(case));
    assert_eq!(
        with_td.gradients(&xv, &yv, &l).unwrap().loss,
        base.gradients(&xv, &yv, &l).unwrap().loss
    );
    refused(
        "lstm",
        "bias_regularizer",
        serde_json::json!({"class_name": "L2", "config": {"l2": -0.5}}),
    );
    // a wrapper frozen apart from its inner layer
    let bytes = std::fs::read(dir().join("graph_frozen.keras")).unwrap();
    let members = lstm_wgpu::archive::members(&bytes).unwrap();
    let member = |n: &str| members.iter().find(|(m, _)| m == n).unwrap().1.to_vec();
    let mut config: serde_json::Value = serde_json::from_slice(&member("config.json")).unwrap();
    for l in config["config"]["layers"].as_array_mut().unwrap() {
        if l["config"]["name"] == "bidirectional" {
            l["config"]["layer"]["config"]["trainable"] = serde_json::json!(true);
        }
    }
    let model = KerasModel::from_config_and_weights(&config, &member("model.weights.h5")).unwrap();
    let e = Functional::<f32>::from_model(&model)
        .unwrap_err()
        .to_string();
    assert!(e.contains("trainable of layer bidirectional"), "{e}");
}

/// Trained graphs written back: the `.keras` file (the original's config with the new
/// weights) loads here, its weights and state those trained, and its inference graph
/// predicts what the trained [`Functional`] predicts on every output; the `.weights.h5`
/// alone does the same through `from_config_and_weights`. The files and the crate's
/// predictions stay in the temporary directory for Keras 3 to load
/// (`scripts/check_saved_graph_training.py`).
#[test]
fn trained_graphs_are_written_back_as_keras_files() {
    use ndarray_npy::WriteNpyExt;
    let tmp = std::env::temp_dir();
    for m in MODELS {
        let name = format!("graph_grads_{m}_f32");
        let a = npz::<f32>(&name);
        let meta = meta(&name);
        let mut net = net::<f32>(&name, &a);
        let xs = indexed(&a, "x");
        let ys = indexed(&a, "y");
        let xv: Vec<_> = xs.iter().map(|x| x.view()).collect();
        let yv: Vec<_> = ys.iter().map(|y| y.view()).collect();
        let before = net.weights();
        let frozen: Vec<(String, Vec<ArrayD<f32>>)> = net
            .frozen_layers()
            .iter()
            .map(|n| {
                let l = &net.layers.iter().find(|(m, _)| m == n).unwrap().1;
                (n.to_string(), l.weights())
            })
            .collect();
        let mut opt = Optimizer::adam(0.05);
        net.fit(
            &xv,
            &yv,
            &losses(&meta),
            &FitOptions::new(Loss::MeanSquaredError, 2, 2),
            &mut opt,
        )
        .unwrap();
        let moved = before
            .iter()
            .zip(net.weights())
            .map(|(x, y)| worst(x, &y, m))
            .fold(0.0, f64::max);
        assert!(moved > 1e-3, "{m}: training moved the weights by {moved}");
        // a frozen layer's weights stay as loaded
        for (n, w) in &frozen {
            let l = &net.layers.iter().find(|(m, _)| m == n).unwrap().1;
            assert_eq!(&l.weights(), w, "{m}: frozen layer {n} moved");
        }
        if m == "graph_frozen" {
            let names: Vec<&str> = frozen.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                ["embedding", "batch_normalization", "lstm", "bidirectional"]
            );
        }
        let original = std::fs::read(model_path(&meta)).unwrap();
        let bytes = net.keras_file(&original).unwrap();
        let mut back = KerasModel::from_keras_bytes(&bytes).unwrap();
        let reread = Functional::<f32>::from_model(&back).unwrap();
        assert_eq!(reread.weights(), net.weights(), "{m}");
        assert_eq!(reread.state(), net.state(), "{m}");
        // the inference graph on the saved file against the trained network
        let inputs: Vec<lstm_wgpu::model::ModelInput> = back
            .inputs()
            .iter()
            .zip(&xs)
            .map(|(spec, x)| {
                if spec.dtype.starts_with("int") {
                    x.mapv(|v| v as i64).into()
                } else {
                    x.clone().into()
                }
            })
            .collect();
        let got = back.predict_inputs(&inputs).unwrap();
        let want = net.predict(&xv).unwrap();
        assert_eq!(got.len(), want.len(), "{m}: outputs");
        let mut err = 0.0f64;
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            err = err.max(worst(g, w, &format!("{m} output {k}")));
        }
        assert!(err <= 1e-5, "{m}: the reloaded model differs by {err:e}");
        // the .weights.h5 alone, with the model's config
        let h5 = net.weights_h5(back.config()).unwrap();
        let again = KerasModel::from_config_and_weights(back.config(), &h5).unwrap();
        assert_eq!(
            Functional::<f32>::from_model(&again).unwrap().weights(),
            net.weights(),
            "{m}"
        );
        // for scripts/check_saved_graph_training.py
        let stem = tmp.join(format!("lstm_wgpu_trained_graph_{m}"));
        std::fs::write(stem.with_extension("keras"), &bytes).unwrap();
        std::fs::write(stem.with_extension("weights.h5"), &h5).unwrap();
        for (k, w) in want.iter().enumerate() {
            let f = std::fs::File::create(format!("{}.pred{k}.npy", stem.display())).unwrap();
            w.write_npy(f).unwrap();
        }
        println!("{m}: reloaded, {} outputs within {err:.1e}", want.len());
    }
}
