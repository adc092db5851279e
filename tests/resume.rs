//! Training resumed from compiled `.keras` files that Keras 3.15.1 saved after `fit`
//! (`scripts/record_resume.py`, `tests/data/training/resume_*`): the optimizer (Adam with
//! clipnorm, centered RMSprop with momentum, Nesterov SGD, AdamW on a graph with a frozen
//! layer and a BatchNormalization) and its state read from the file, the losses from its
//! `compile_config`, then 9 more steps matched against Keras's `load_model` + `fit` (≤ 1e-4);
//! the compiled files the crate writes read back to the same state, and left in the
//! temporary directory for `scripts/check_resumed.py` (Keras resumes them).

use lstm_wgpu::model::KerasModel;
use lstm_wgpu::train::{
    FitOptions, Functional, GpuFunctional, Loss, Losses, Optimizer, Sequential,
};
use lstm_wgpu::LstmError;
use ndarray::{ArrayD, ArrayViewD};
use ndarray_npy::ReadNpyExt;
use std::collections::HashMap;
use std::path::PathBuf;

mod common;

const CASES: [&str; 4] = [
    "resume_adam",
    "resume_rmsprop",
    "resume_sgd",
    "resume_adamw_graph",
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/training")
}

fn npz(name: &str) -> HashMap<String, ArrayD<f32>> {
    let bytes = std::fs::read(dir().join(format!("{name}.npz"))).unwrap();
    let mut out = HashMap::new();
    for (member, data) in lstm_wgpu::archive::members(&bytes).unwrap() {
        let key = member.trim_end_matches(".npy").to_string();
        let a = match ArrayD::<f32>::read_npy(std::io::Cursor::new(data)) {
            Ok(a) => a,
            Err(_) => ArrayD::<f64>::read_npy(std::io::Cursor::new(data))
                .unwrap()
                .mapv(|v| v as f32),
        };
        out.insert(key, a);
    }
    out
}

fn indexed(a: &HashMap<String, ArrayD<f32>>, prefix: &str) -> Vec<ArrayD<f32>> {
    (0..)
        .map_while(|k| a.get(&format!("{prefix}{k}")).cloned())
        .collect()
}

fn worst(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

/// A case: the saved file's bytes (`NAME.keras`, or `NAME.h5`), its model, the arrays, the
/// fit options.
fn case(
    name: &str,
) -> (
    Vec<u8>,
    KerasModel,
    HashMap<String, ArrayD<f32>>,
    FitOptions,
) {
    // (a `.keras` file Keras 3 saved, or an `.h5` file Keras 2 saved)
    let keras = dir().join(format!("{name}.keras"));
    let (bytes, model) = if keras.exists() {
        let bytes = std::fs::read(keras).unwrap();
        let model = KerasModel::from_keras_bytes(&bytes).unwrap();
        (bytes, model)
    } else {
        let bytes = std::fs::read(dir().join(format!("{name}.h5"))).unwrap();
        let model = KerasModel::from_h5_bytes(&bytes).unwrap();
        (bytes, model)
    };
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join(format!("{name}.json"))).unwrap())
            .unwrap();
    let options = FitOptions::new(
        Loss::MeanSquaredError,
        meta["batch_size"].as_u64().unwrap() as usize,
        meta["epochs"].as_u64().unwrap() as usize,
    );
    (bytes, model, npz(name), options)
}

/// A case loaded to resume: the file's graph, losses and optimizer (its state), the data.
struct Resumed {
    bytes: Vec<u8>,
    a: HashMap<String, ArrayD<f32>>,
    options: FitOptions,
    net: Functional<f32>,
    losses: Losses,
    opt: Optimizer,
    xs: Vec<ArrayD<f32>>,
    ys: Vec<ArrayD<f32>>,
}

fn resumed(name: &str) -> Resumed {
    let (bytes, model, a, options) = case(name);
    let net = Functional::<f32>::from_model(&model).unwrap();
    let losses = Losses::from_keras_file(&bytes, &model.output_names()).unwrap();
    let opt = Optimizer::from_keras_file(&bytes, &net.weights()).unwrap();
    let (xs, ys) = (indexed(&a, "x"), indexed(&a, "y"));
    Resumed {
        bytes,
        a,
        options,
        net,
        losses,
        opt,
        xs,
        ys,
    }
}

/// The worst difference of `weights` and `state` from the case's final ones, and of the
/// epoch losses.
fn against_keras(
    a: &HashMap<String, ArrayD<f32>>,
    weights: &[ArrayD<f32>],
    state: &[ArrayD<f32>],
    epoch_loss: &[f64],
) -> (f64, f64) {
    let finals = indexed(a, "final");
    assert_eq!(weights.len(), finals.len());
    let mut w = weights
        .iter()
        .zip(&finals)
        .map(|(x, y)| worst(x, y))
        .fold(0.0, f64::max);
    let states = indexed(a, "final_state");
    assert_eq!(state.len(), states.len());
    for (x, y) in state.iter().zip(&states) {
        w = w.max(worst(x, y));
    }
    let l = epoch_loss
        .iter()
        .zip(a["epoch_loss"].iter())
        .map(|(x, y)| (x - f64::from(*y)).abs())
        .fold(0.0, f64::max);
    (w, l)
}

/// The same resumed fit through the chain trainer where `model` is a chain (the optimizer
/// from `load` on its weights), against Keras's.
fn resume_as_sequential(
    name: &str,
    model: &KerasModel,
    a: &HashMap<String, ArrayD<f32>>,
    (losses, options): (&Losses, &FitOptions),
    load: &dyn Fn(&[ArrayD<f32>]) -> Optimizer,
) {
    let Ok(mut seq) = Sequential::<f32>::from_model(model) else {
        return;
    };
    let mut opt = load(&seq.weights());
    let loss = losses.per_output[0].unwrap().0;
    let (xs, ys) = (indexed(a, "x"), indexed(a, "y"));
    let h = seq
        .fit(
            xs[0].view(),
            ys[0].view(),
            &FitOptions::new(loss, options.batch_size, options.epochs),
            &mut opt,
        )
        .unwrap();
    let (w, l) = against_keras(a, &seq.weights(), &seq.state(), &h.epoch_loss);
    println!("{name}: resumed as a Sequential, weights {w:.1e}, epoch losses {l:.1e}");
    assert!(w <= 1e-4 && l <= 1e-4, "{name} (Sequential): {w:e}, {l:e}");
}

#[test]
fn training_resumes_from_compiled_keras_files() {
    for name in CASES {
        let (bytes, model, a, options) = case(name);
        let mut net = Functional::<f32>::from_model(&model).unwrap();
        assert_eq!(
            net.weights(),
            indexed(&a, "w"),
            "{name}: the file's weights"
        );
        let losses = Losses::from_keras_file(&bytes, &model.output_names()).unwrap();
        let xs = indexed(&a, "x");
        let ys = indexed(&a, "y");
        let xv: Vec<ArrayViewD<'_, f32>> = xs.iter().map(|x| x.view()).collect();
        let yv: Vec<ArrayViewD<'_, f32>> = ys.iter().map(|y| y.view()).collect();
        // without the saved state: the optimizer of the compile_config, afresh
        let fresh = {
            let members = lstm_wgpu::archive::members(&bytes).unwrap();
            let config: serde_json::Value =
                serde_json::from_slice(members.iter().find(|(m, _)| m == "config.json").unwrap().1)
                    .unwrap();
            let o = &config["compile_config"]["optimizer"];
            let mut opt =
                Optimizer::from_keras(o["class_name"].as_str().unwrap(), &o["config"]).unwrap();
            let mut other = Functional::<f32>::from_model(&model).unwrap();
            let h = other.fit(&xv, &yv, &losses, &options, &mut opt).unwrap();
            against_keras(&a, &other.weights(), &other.state(), &h.epoch_loss).0
        };
        let mut opt = Optimizer::from_keras_file(&bytes, &net.weights()).unwrap();
        assert_eq!(opt.iterations(), 9, "{name}: Keras's steps");
        let h = net.fit(&xv, &yv, &losses, &options, &mut opt).unwrap();
        assert_eq!(opt.iterations(), 18, "{name}");
        let (w, l) = against_keras(&a, &net.weights(), &net.state(), &h.epoch_loss);
        println!(
            "{name}: resumed, weights {w:.1e}, epoch losses {l:.1e} from Keras's; \
             without the saved state {fresh:.1e}"
        );
        assert!(
            w <= 1e-4 && l <= 1e-4,
            "{name}: weights {w:e}, losses {l:e}"
        );
        assert!(
            fresh > 1e-3,
            "{name}: the saved state made no difference ({fresh:e})"
        );
        // the same through the chain trainer, where the model is a chain
        resume_as_sequential(name, &model, &a, (&losses, &options), &|w| {
            Optimizer::from_keras_file(&bytes, w).unwrap()
        });
    }
}

/// The GPU path resumes the same way (lavapipe in CI).
#[test]
fn gpu_training_resumes_from_compiled_keras_files() {
    let Some(ctx) = common::gpu("gpu_training_resumes_from_compiled_keras_files") else {
        return;
    };
    for name in CASES {
        let r = resumed(name);
        let (a, options, net, losses, mut opt) = (r.a, r.options, r.net, r.losses, r.opt);
        let xv: Vec<ArrayViewD<'_, f32>> = r.xs.iter().map(|x| x.view()).collect();
        let yv: Vec<ArrayViewD<'_, f32>> = r.ys.iter().map(|y| y.view()).collect();
        let mut gpu = GpuFunctional::new(net, ctx.clone()).unwrap();
        let h = gpu.fit(&xv, &yv, &losses, &options, &mut opt).unwrap();
        let (w, l) = against_keras(
            &a,
            &gpu.functional().weights(),
            &gpu.functional().state(),
            &h.epoch_loss,
        );
        println!("GPU {name}: resumed, weights {w:.1e}, epoch losses {l:.1e}");
        assert!(
            w <= 1e-4 && l <= 1e-4,
            "GPU {name}: weights {w:e}, losses {l:e}"
        );
    }
}

/// What the crate writes compiled reads back to the same optimizer, losses and weights;
/// the files (and the weights after 9 more steps) stay in the temporary directory for
/// Keras to resume (`scripts/check_resumed.py`).
#[test]
fn compiled_files_keep_the_optimizer_state() {
    use ndarray_npy::WriteNpyExt;
    let tmp = std::env::temp_dir();
    for name in CASES {
        let r = resumed(name);
        let (bytes, options, mut net, losses, mut opt) =
            (r.bytes, r.options, r.net, r.losses, r.opt);
        let xv: Vec<ArrayViewD<'_, f32>> = r.xs.iter().map(|x| x.view()).collect();
        let yv: Vec<ArrayViewD<'_, f32>> = r.ys.iter().map(|y| y.view()).collect();
        net.fit(&xv, &yv, &losses, &options, &mut opt).unwrap();
        let written = net.keras_file_compiled(&bytes, &opt, &losses).unwrap();
        let back = KerasModel::from_keras_bytes(&written).unwrap();
        let mut reread = Functional::<f32>::from_model(&back).unwrap();
        assert_eq!(reread.weights(), net.weights(), "{name}");
        assert_eq!(reread.state(), net.state(), "{name}");
        let mut opt_back = Optimizer::from_keras_file(&written, &reread.weights()).unwrap();
        let shapes: Vec<Vec<usize>> = net.weights().iter().map(|w| w.shape().to_vec()).collect();
        assert_eq!(opt_back.iterations(), 18, "{name}");
        assert_eq!(opt_back.rule, opt.rule, "{name}");
        assert_eq!(
            opt_back.keras_variables(&shapes).unwrap(),
            opt.keras_variables(&shapes).unwrap(),
            "{name}: the optimizer's variables"
        );
        let losses_back = Losses::from_keras_file(&written, &back.output_names()).unwrap();
        assert_eq!(losses_back.per_output, losses.per_output, "{name}");
        // 9 more steps from the file and from memory: the same
        net.fit(&xv, &yv, &losses, &options, &mut opt).unwrap();
        reread
            .fit(&xv, &yv, &losses_back, &options, &mut opt_back)
            .unwrap();
        assert_eq!(
            reread.weights(),
            net.weights(),
            "{name}: resumed from the file"
        );
        std::fs::write(tmp.join(format!("lstm_wgpu_{name}.keras")), &written).unwrap();
        for (k, w) in net.weights().iter().enumerate() {
            let f =
                std::fs::File::create(tmp.join(format!("lstm_wgpu_{name}.final{k}.npy"))).unwrap();
            w.write_npy(f).unwrap();
        }
    }
}

/// A model saved uncompiled, trained here and written compiled: the file gets a
/// `compile_config` of its own (SGD with momentum and clipvalue, three weighted losses),
/// left in the temporary directory for `scripts/check_resumed.py`.
#[test]
fn uncompiled_files_are_written_compiled() {
    use ndarray_npy::WriteNpyExt;
    let bytes = std::fs::read(dir().join("graph_logits.keras")).unwrap();
    let model = KerasModel::from_keras_bytes(&bytes).unwrap();
    assert!(Losses::from_keras_file(&bytes, &model.output_names()).is_err());
    let mut net = Functional::<f32>::from_model(&model).unwrap();
    let a = npz("graph_fit_graph_logits");
    let xs = indexed(&a, "x");
    let ys = indexed(&a, "y");
    let xv: Vec<ArrayViewD<'_, f32>> = xs.iter().map(|x| x.view()).collect();
    let yv: Vec<ArrayViewD<'_, f32>> = ys.iter().map(|y| y.view()).collect();
    let losses = Losses::new(vec![
        Some(Loss::CategoricalCrossentropy { from_logits: false }),
        Some(Loss::BinaryCrossentropy { from_logits: false }),
        Some(Loss::MeanSquaredError),
    ])
    .weights(&[1.0, 0.7, 0.4]);
    let mut opt = Optimizer::sgd(0.05).momentum(0.5, false);
    opt.clipvalue = Some(0.5);
    let options = FitOptions::new(Loss::MeanSquaredError, 4, 2);
    net.fit(&xv, &yv, &losses, &options, &mut opt).unwrap();
    let written = net.keras_file_compiled(&bytes, &opt, &losses).unwrap();
    let back = KerasModel::from_keras_bytes(&written).unwrap();
    let losses_back = Losses::from_keras_file(&written, &back.output_names()).unwrap();
    assert_eq!(losses_back.per_output, losses.per_output);
    let reread = Functional::<f32>::from_model(&back).unwrap();
    let opt_back = Optimizer::from_keras_file(&written, &reread.weights()).unwrap();
    assert_eq!(opt_back.clipvalue, Some(0.5));
    assert_eq!(opt_back.rule, opt.rule);
    assert_eq!(opt_back.iterations(), opt.iterations());
    net.fit(&xv, &yv, &losses, &options, &mut opt).unwrap();
    let tmp = std::env::temp_dir();
    std::fs::write(tmp.join("lstm_wgpu_compiled_graph_logits.keras"), &written).unwrap();
    for (k, w) in net.weights().iter().enumerate() {
        let f = std::fs::File::create(
            tmp.join(format!("lstm_wgpu_compiled_graph_logits.final{k}.npy")),
        )
        .unwrap();
        w.write_npy(f).unwrap();
    }
}

#[test]
fn optimizer_state_errors_name_the_problem() {
    let (bytes, model, _, _) = case("resume_adam");
    let net = Functional::<f32>::from_model(&model).unwrap();
    // another model's weights: the count of slots does not fit
    let mut fewer = net.weights();
    fewer.pop();
    let e = Optimizer::from_keras_file(&bytes, &fewer).unwrap_err();
    assert!(
        matches!(&e, LstmError::InvalidArgument { what, .. } if what == "optimizer variables"),
        "{e}"
    );
    // a slot of another shape
    let mut other = net.weights();
    other[0] = ArrayD::zeros(ndarray::IxDyn(&[2, 2]));
    let e = Optimizer::from_keras_file(&bytes, &other).unwrap_err();
    assert!(e.to_string().contains("optimizer slot of weight 0"), "{e}");
    // an uncompiled file
    let plain = std::fs::read(dir().join("graph_dot.keras")).unwrap();
    let e = Optimizer::from_keras_file(&plain, &net.weights()).unwrap_err();
    assert!(e.to_string().contains("compile_config"), "{e}");
    let e = Losses::from_keras_file(&plain, &["out"]).unwrap_err();
    assert!(e.to_string().contains("compile_config"), "{e}");
    // settings that change the steps and are not built
    let ema = serde_json::json!({"learning_rate": 0.01, "use_ema": true});
    let e = Optimizer::from_keras("Adam", &ema).unwrap_err();
    assert!(e.to_string().contains("use_ema"), "{e}");
    let acc = serde_json::json!({"gradient_accumulation_steps": 4});
    let e = Optimizer::from_keras("SGD", &acc).unwrap_err();
    assert!(e.to_string().contains("gradient_accumulation_steps"), "{e}");
    let smooth = serde_json::json!({"loss": {"class_name": "CategoricalCrossentropy",
        "config": {"label_smoothing": 0.1}}});
    let e = Losses::from_compile_config(&smooth, &["out"]).unwrap_err();
    assert!(e.to_string().contains("label_smoothing"), "{e}");
    let dict = serde_json::json!({"loss": {"b": "mse", "a": null}, "loss_weights": {"b": 0.5}});
    let l = Losses::from_compile_config(&dict, &["a", "b"]).unwrap();
    assert_eq!(l.per_output, [None, Some((Loss::MeanSquaredError, 0.5))]);
    let e = Losses::from_compile_config(&dict, &["a", "c"]).unwrap_err();
    assert!(e.to_string().contains("names b"), "{e}");
}

/// Training resumed from Keras 2 `.h5` files (`scripts/record_resume_h5.py`, tf-keras 2.21):
/// the optimizers of TF 2.11+ (Adam with clipnorm, slots interleaved `Adam/m/..`,
/// `Adam/v/..`) and the legacy ones (centered RMSprop with momentum; Adam on a two-output
/// graph with losses and loss weights by output name; slots by kind, `.../m:0`), read from
/// `training_config` and `optimizer_weights`, then 9 more steps against Keras 2's
/// `load_model` + `fit`, through the graph trainer and, for chains, the chain trainer.
#[test]
fn training_resumes_from_keras2_h5_files() {
    for name in [
        "resume_k2_adam",
        "resume_k2_legacy_rmsprop",
        "resume_k2_legacy_adam_graph",
    ] {
        let (bytes, model, a, options) = case(name);
        let mut net = Functional::<f32>::from_model(&model).unwrap();
        assert_eq!(
            net.weights(),
            indexed(&a, "w"),
            "{name}: the file's weights"
        );
        let losses = Losses::from_h5_file(&bytes, &model.output_names()).unwrap();
        let (xs, ys) = (indexed(&a, "x"), indexed(&a, "y"));
        let xv: Vec<ArrayViewD<'_, f32>> = xs.iter().map(|x| x.view()).collect();
        let yv: Vec<ArrayViewD<'_, f32>> = ys.iter().map(|y| y.view()).collect();
        let mut opt = Optimizer::from_h5_file(&bytes, &net.weights()).unwrap();
        assert_eq!(opt.iterations(), 9, "{name}: Keras's steps");
        // (the same optimizer afresh: the saved state must matter)
        let fresh = {
            let mut o = opt.clone();
            let shapes: Vec<Vec<usize>> =
                net.weights().iter().map(|w| w.shape().to_vec()).collect();
            let lr = ndarray::arr0(o.learning_rate).into_dyn();
            o.set_keras_variables(&[ndarray::arr0(0.0).into_dyn(), lr], &shapes)
                .unwrap();
            let mut other = Functional::<f32>::from_model(&model).unwrap();
            let h = other.fit(&xv, &yv, &losses, &options, &mut o).unwrap();
            against_keras(&a, &other.weights(), &[], &h.epoch_loss).0
        };
        let h = net.fit(&xv, &yv, &losses, &options, &mut opt).unwrap();
        assert_eq!(opt.iterations(), 18, "{name}");
        let (w, l) = against_keras(&a, &net.weights(), &[], &h.epoch_loss);
        println!(
            "{name}: resumed from the .h5, weights {w:.1e}, epoch losses {l:.1e} from \
             Keras 2's; without the saved state {fresh:.1e}"
        );
        assert!(
            w <= 1e-4 && l <= 1e-4,
            "{name}: weights {w:e}, losses {l:e}"
        );
        assert!(fresh > 1e-3, "{name}: the saved state made no difference");
        resume_as_sequential(name, &model, &a, (&losses, &options), &|w| {
            Optimizer::from_h5_file(&bytes, w).unwrap()
        });
    }
}

/// The optimizer state of `.h5` files others saved (`shared/golden/keras-legacy`: three
/// Keras 2 files with TF 2.11+ Adam, a Keras 3 `.h5` with its own naming) reads to the
/// files' own values: every slot equal to its dataset, found by name.
#[test]
fn optimizer_state_reads_from_shared_h5_files() {
    let legacy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden/keras-legacy");
    for (file, steps) in [
        ("k2_public_embedding_bigru.h5", 4),
        ("k2_public_encoder_decoder.h5", 4),
        ("k2_public_stacked_hard_sigmoid.h5", 4),
        ("k3_public_whole_model.h5", 1),
    ] {
        let bytes = std::fs::read(legacy.join(file)).unwrap();
        let model = KerasModel::from_h5_bytes(&bytes).unwrap();
        let net = Functional::<f32>::from_model(&model).unwrap();
        let opt = Optimizer::from_h5_file(&bytes, &net.weights()).unwrap();
        assert_eq!(opt.iterations(), steps, "{file}");
        let shapes: Vec<Vec<usize>> = net.weights().iter().map(|w| w.shape().to_vec()).collect();
        let vars = opt.keras_variables(&shapes).unwrap();
        // Keras 3's order: m_0 v_0 m_1 v_1 ...; each against the file's dataset by name
        let h5 = lstm_wgpu::hdf5::H5File::new(&bytes).unwrap();
        let names = h5
            .string_attribute("optimizer_weights", "weight_names")
            .unwrap();
        let slot_names: Vec<&String> = names
            .iter()
            .filter(|n| !n.contains("iteration") && !n.ends_with("learning_rate"))
            .collect();
        assert_eq!(slot_names.len(), 2 * shapes.len(), "{file}");
        for (k, name) in slot_names.iter().enumerate() {
            let d = h5.dataset(&format!("optimizer_weights/{name}")).unwrap();
            let got: Vec<f32> = vars[2 + k].iter().map(|&v| v as f32).collect();
            assert_eq!(got, d.values, "{file}: {name}");
        }
        let losses = Losses::from_h5_file(&bytes, &model.output_names()).unwrap();
        assert!(losses.per_output.iter().all(Option::is_some), "{file}");
    }
}

/// `.h5` optimizer state that does not fit is refused with errors saying why: a file
/// without `training_config`, another model's weights.
#[test]
fn h5_optimizer_state_errors_name_the_problem() {
    let legacy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden/keras-legacy");
    let weights_only = std::fs::read(legacy.join("k3_public_sharded_00000.weights.h5")).unwrap();
    let err = Optimizer::from_h5_file::<f32>(&weights_only, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("training_config"), "{err}");
    let bytes = std::fs::read(dir().join("resume_k2_adam.h5")).unwrap();
    let other = std::fs::read(dir().join("resume_k2_legacy_adam_graph.h5")).unwrap();
    let net = Functional::<f32>::from_model(&KerasModel::from_h5_bytes(&other).unwrap()).unwrap();
    let err = Optimizer::from_h5_file(&bytes, &net.weights())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trainable weights") || err.contains("shape"),
        "{err}"
    );
    let mut wrong = net.weights();
    wrong.truncate(5);
    let model = KerasModel::from_h5_bytes(&bytes).unwrap();
    let mine = Functional::<f32>::from_model(&model).unwrap().weights();
    assert_eq!(mine.len(), 5);
    let err = Optimizer::from_h5_file(&bytes, &wrong)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shape") || err.contains("optimizer slot"),
        "{err}"
    );
    println!("{err}");
}
