//! Training against Keras 3.15.1 (`tests/data/training`, `scripts/record_training.py`):
//! LSTM layer gradients (masks, go_backwards, initial states and their gradients, states
//! returned, zero_output_for_mask, 300 steps) as `tf.GradientTape` gives them, in float64
//! (≤ 1e-10) and float32 (≤ 1e-5); model losses and gradients (MSE, MAE, binary and sparse
//! categorical cross-entropy from Keras's cached logits, a masked loss); `model.fit` runs of
//! 20 steps with Adam, SGD (Nesterov, clipnorm), RMSprop (clipvalue) and AdamW (masked MAE)
//! matched weight for weight (≤ 1e-4); central differences in f64; diverging training.

use lstm_wgpu::model::KerasModel;
use lstm_wgpu::train::{
    lstm_gradients, FitOptions, Gradients, Loss, LstmCotangents, Optimizer, Sequential,
};
use lstm_wgpu::{Element, LstmConfig, LstmError, LstmWeights};
use ndarray::{Array2, Array3, ArrayD, Ix1, Ix2, Ix3};
use ndarray_npy::ReadNpyExt;
use std::collections::HashMap;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/training")
}

/// The arrays of `NAME.npz` as `T` (float32, float64 and bool arrays).
fn npz<T: Element>(name: &str) -> HashMap<String, ArrayD<T>> {
    let bytes = std::fs::read(dir().join(format!("{name}.npz"))).unwrap();
    let mut out = HashMap::new();
    for (member, data) in lstm_wgpu::archive::members(&bytes).unwrap() {
        let key = member.trim_end_matches(".npy").to_string();
        let a: ArrayD<T> = if let Ok(a) = ArrayD::<f64>::read_npy(std::io::Cursor::new(data)) {
            a.mapv(T::from_f64)
        } else if let Ok(a) = ArrayD::<f32>::read_npy(std::io::Cursor::new(data)) {
            a.mapv(|v| T::from_f64(f64::from(v)))
        } else {
            let a = ArrayD::<bool>::read_npy(std::io::Cursor::new(data))
                .unwrap_or_else(|e| panic!("{name}/{member}: {e}"));
            a.mapv(|v| T::from_f64(if v { 1.0 } else { 0.0 }))
        };
        out.insert(key, a);
    }
    out
}

/// The `config.json` and `model.weights.h5` of `NAME.keras`.
fn config_and_weights(name: &str) -> (serde_json::Value, Vec<u8>) {
    let keras = std::fs::read(dir().join(format!("{name}.keras"))).unwrap();
    let members = lstm_wgpu::archive::members(&keras).unwrap();
    let member = |n: &str| members.iter().find(|(m, _)| m == n).unwrap().1;
    (
        serde_json::from_slice(member("config.json")).unwrap(),
        member("model.weights.h5").to_vec(),
    )
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

fn layer_case<T: Element>(name: &str, tol: f64) {
    let a = npz::<T>(name);
    let m = meta(name);
    let class = m["cls"].as_str().unwrap_or("LSTM");
    let cfg = LstmConfig::from_keras_class(class, &m["config"]).unwrap();
    let lstm = class == "LSTM";
    let two = |k: &str| a[k].clone().into_dimensionality::<Ix2>().unwrap();
    let weights = LstmWeights::new(
        &cfg,
        a["x"].shape()[2],
        two("w0"),
        two("w1"),
        // (a GRU with reset_after: [2, 3H], the input bias then the recurrent one)
        a.get("w2").map(|b| b.iter().copied().collect()),
    )
    .unwrap();
    let layer = lstm_wgpu::cpu::Lstm::new(cfg.clone(), weights).unwrap();
    let x = a["x"].clone().into_dimensionality::<Ix3>().unwrap();
    let mask: Option<Array2<bool>> = m["masked"]
        .as_bool()
        .unwrap()
        .then(|| two("mask").mapv(|v| v != T::zero()));
    let states = m["initial_state"].as_bool().unwrap();
    let (h0, c0) = (two("h0"), two("c0"));
    let init = states.then(|| (h0.view(), c0.view()));
    let cot = LstmCotangents {
        output: a["cot0"].clone(),
        h: cfg.return_state.then(|| two("cot1")),
        c: (cfg.return_state && lstm).then(|| two("cot2")),
    };
    let (call, g) = lstm_gradients(
        &layer,
        x.view(),
        mask.as_ref().map(|m| m.view()),
        init,
        &cot,
    )
    .unwrap();
    let mut checks = vec![
        ("output", worst(&call.output, &a["out0"], name)),
        ("kernel", worst(&g.kernel.into_dyn(), &a["grad_w0"], name)),
        (
            "recurrent_kernel",
            worst(&g.recurrent_kernel.into_dyn(), &a["grad_w1"], name),
        ),
        ("x", worst(&g.x.into_dyn(), &a["grad_x"], name)),
    ];
    if let Some(b) = g.bias {
        let want = a["grad_w2"].iter().copied().collect::<ndarray::Array1<T>>();
        checks.push(("bias", worst(&b.into_dyn(), &want.into_dyn(), name)));
    }
    if cfg.return_state {
        checks.push(("h", worst(&call.h.into_dyn(), &a["out1"], name)));
        if lstm {
            checks.push(("c", worst(&call.c.into_dyn(), &a["out2"], name)));
        }
    }
    if states {
        checks.push(("h0", worst(&g.h0.into_dyn(), &a["grad_h0"], name)));
        checks.push(("c0", worst(&g.c0.into_dyn(), &a["grad_c0"], name)));
    }
    for (what, err) in &checks {
        assert!(*err <= tol, "{name} {what}: {err:e} > {tol:e}");
    }
    let w = checks.iter().map(|c| c.1).fold(0.0, f64::max);
    println!("{name}: worst {w:.1e}");
}

#[test]
fn recurrent_layer_gradients_match_gradient_tape() {
    for name in [
        "seq_f64",
        "last_backwards_f64",
        "states_f64",
        "zero_output_f64",
        "long_f64",
        "gru_f64",
        "gru_v1_f64",
        "gru_v1_seq_f64",
        "rnn_f64",
        "rnn_long_f64",
    ] {
        layer_case::<f64>(name, 1e-10);
    }
    layer_case::<f32>("seq_f32", 1e-5);
    layer_case::<f32>("gru_f32", 1e-5);
}

/// A Sequential model from its `.keras` file with the recorded weights in `T` (the file's
/// float64 weights would pass through the loader's f32).
fn model<T: Element>(name: &str, a: &HashMap<String, ArrayD<T>>) -> Sequential<T> {
    let model = KerasModel::load(&dir().join(format!("{name}.keras"))).unwrap();
    let mut net = Sequential::<T>::from_model(&model).unwrap();
    let n = net.weights().len();
    let w: Vec<ArrayD<T>> = (0..n).map(|k| a[&format!("w{k}")].clone()).collect();
    net.set_weights(&w).unwrap();
    // (the non-trainable variables, as the file holds them)
    let ns = net.state().len();
    let st: Vec<ArrayD<T>> = (0..ns).map(|k| a[&format!("s{k}")].clone()).collect();
    net.set_state(&st).unwrap();
    net
}

/// The recorded model case `name` through `run` (the prediction and the gradients of a
/// chain on `x`, `y`): prediction, loss, every weight's and x's gradient within `tol` of
/// Keras's; `path` names the path in the messages.
fn model_grads_on<T: Element>(
    name: &str,
    tol: f64,
    path: &str,
    run: impl FnOnce(Sequential<T>, &ArrayD<T>, &ArrayD<T>, Loss) -> (Option<ArrayD<T>>, Gradients<T>),
) {
    let a = npz::<T>(name);
    let loss = Loss::from_keras(meta(name)["loss"].as_str().unwrap()).unwrap();
    let (pred, g) = run(model::<T>(name, &a), &a["x"], &a["y"], loss);
    // (a training-mode case has no inference prediction to compare: its loss is the
    // training-mode forward's)
    let p = pred.map_or(0.0, |pred| worst(&pred, &a["pred"], name));
    let l = (g.loss.to_f64() - a["loss"].iter().next().unwrap().to_f64()).abs();
    let mut w = p.max(l);
    for (k, gw) in g.weights.iter().enumerate() {
        w = w.max(worst(
            gw,
            &a[&format!("grad{k}")],
            &format!("{name} grad{k}"),
        ));
    }
    w = w.max(worst(&g.x, &a["grad_x"], name));
    println!("{path} {name}: worst {w:.1e} (loss {})", g.loss);
    assert!(w <= tol, "{path} {name}: {w:e} > {tol:e}");
}

fn model_grads<T: Element>(name: &str, tol: f64) {
    model_grads_on::<T>(name, tol, "CPU", |net, x, y, loss| {
        let pred = net.predict(x.view()).unwrap();
        (Some(pred), net.gradients(x.view(), y.view(), loss).unwrap())
    });
}

/// The seed of a training-mode case (`grads_train`: Keras's tape over
/// `model(x, training=True)` with the crate's masks for it).
fn training_seed(name: &str) -> u64 {
    meta(name)["seed"].as_u64().unwrap()
}

/// Keras's gradients in training mode (Dropout, a recurrent layer's `dropout` and
/// `recurrent_dropout` with Keras's per-gate masks of implementation 1; recorded with the
/// crate's masks given to Keras's cells) against `gradients_in_training`.
#[test]
fn training_mode_gradients_match_gradient_tape() {
    for (name, tol) in [
        ("grads_rec_dropout_f64", 1e-10),
        ("grads_embed_pool_train_f64", 1e-10),
        ("grads_bn_train_f64", 1e-10),
        ("grads_noise_train_f64", 1e-10),
        ("grads_rec_dropout_f32", 1e-5),
    ] {
        let seed = training_seed(name);
        let run = |net: Sequential<f64>, x: &ArrayD<f64>, y: &ArrayD<f64>, loss| {
            let g = net
                .gradients_in_training(x.view(), y.view(), loss, seed)
                .unwrap();
            // training mode differs from inference: the masks are in use
            let inference = net.gradients(x.view(), y.view(), loss).unwrap();
            assert!((g.loss - inference.loss).abs() > 1e-3, "{name}");
            (None, g)
        };
        if name.ends_with("f64") {
            model_grads_on::<f64>(name, tol, "CPU", run);
        } else {
            model_grads_on::<f32>(name, tol, "CPU", |net, x, y, loss| {
                (
                    None,
                    net.gradients_in_training(x.view(), y.view(), loss, seed)
                        .unwrap(),
                )
            });
        }
    }
}

/// The recorded 20-step fit `name` through `run` (a chain, x, y, the options and Keras's
/// optimizer; it returns the history and the trained weights): the weights and the epoch
/// losses within 1e-4 of Keras's, and Keras's weights did move.
fn fit_case(
    name: &str,
    path: &str,
    run: impl FnOnce(
        Sequential<f32>,
        &ArrayD<f32>,
        &ArrayD<f32>,
        &FitOptions,
        &mut Optimizer,
    ) -> (
        lstm_wgpu::train::History,
        Vec<ArrayD<f32>>,
        Vec<ArrayD<f32>>,
    ),
) {
    let a = npz::<f32>(name);
    let m = meta(name);
    let o = &m["optimizer"];
    let mut opt = Optimizer::from_keras(o["kind"].as_str().unwrap(), o).unwrap();
    let loss = Loss::from_keras(m["loss"].as_str().unwrap()).unwrap();
    let options = FitOptions::new(
        loss,
        m["batch_size"].as_u64().unwrap() as usize,
        m["epochs"].as_u64().unwrap() as usize,
    );
    let (h, weights, state) = run(model::<f32>(name, &a), &a["x"], &a["y"], &options, &mut opt);
    assert_eq!(opt.iterations(), 20, "{name}");
    let mut w = 0.0f64;
    for (k, got) in weights.iter().enumerate() {
        w = w.max(worst(
            got,
            &a[&format!("final{k}")],
            &format!("{name} weight {k}"),
        ));
    }
    // the non-trainable variables (BatchNormalization's moving statistics) as Keras's fit
    // left them
    assert_eq!(
        state.len(),
        (0..)
            .take_while(|k| a.contains_key(&format!("final_state{k}")))
            .count(),
        "{name}"
    );
    for (k, got) in state.iter().enumerate() {
        w = w.max(worst(
            got,
            &a[&format!("final_state{k}")],
            &format!("{name} state {k}"),
        ));
    }
    let keras_loss: Vec<f64> = a["epoch_loss"].iter().map(|v| v.to_f64()).collect();
    let l = h
        .epoch_loss
        .iter()
        .zip(&keras_loss)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    println!(
        "{path} {name}: weights {w:.1e}, epoch losses {l:.1e} ({:?})",
        h.epoch_loss
    );
    assert!(w <= 1e-4, "{path} {name}: weights {w:e}");
    assert!(
        l <= 1e-4,
        "{path} {name}: losses {:?} vs {keras_loss:?}",
        h.epoch_loss
    );
    // the training moved the weights: the comparison is not of untouched weights
    let moved = (0..weights.len())
        .map(|k| worst(&a[&format!("w{k}")], &a[&format!("final{k}")], name))
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "{name}: Keras's weights moved {moved}");
}

/// The recorded 20-step fits.
const FIT_CASES: [&str; 9] = [
    "fit_adam",
    "fit_sgd_nesterov",
    "fit_rmsprop",
    "fit_adamw_masked",
    "fit_gru_rnn",
    "fit_bidi",
    "fit_embedding",
    "fit_pool_norm",
    "fit_bn",
];

#[test]
fn model_losses_and_gradients_match_gradient_tape() {
    for name in [
        "grads_lstm_dense_f64",
        "grads_masked_f64",
        "grads_softmax_f64",
        "grads_sigmoid_f64",
        "grads_mae_f64",
        "grads_bce_probs_f64",
        "grads_cce_probs_f64",
        "grads_cce_softmax_f64",
        "grads_gru_rnn_f64",
        "grads_bidi_f64",
        "grads_bidi_mul_f64",
        "grads_dropout_td_f64",
        "grads_rnn_dropout_f64",
        "grads_embedding_f64",
        "grads_pool_norm_f64",
        "grads_conv_same_f64",
        "grads_embed_pool_f64",
        "grads_repeat_flatten_f64",
        "grads_bn_f64",
        "grads_reshape_permute_f64",
    ] {
        model_grads::<f64>(name, 1e-10);
    }
    model_grads::<f32>("grads_lstm_dense_f32", 1e-5);
}

#[test]
fn fit_matches_keras_after_20_steps() {
    for name in FIT_CASES {
        fit_case(name, "CPU", |mut net, x, y, options, opt| {
            let h = net.fit(x.view(), y.view(), options, opt).unwrap();
            (h, net.weights(), net.state())
        });
    }
}

/// Central differences in f64 of `sum(outputs · cotangents)` for random LSTM, GRU (both
/// forms) and SimpleRNN configs
/// (every mask pattern, go_backwards, zero_output_for_mask, states returned, initial
/// states, activations) against the analytic gradients.
#[test]
fn lstm_gradients_match_central_differences() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let acts = [
        ("tanh", "sigmoid"),
        ("relu", "hard_sigmoid"),
        ("softsign", "sigmoid"),
        ("tanh", "tanh"),
    ];
    for round in 0..8 {
        let (b, t, i, h) = (2 + round % 2, 3 + round % 4, 2, 3);
        let (act, rec) = acts[round % 4];
        let class = ["LSTM", "GRU", "SimpleRNN"][round % 3];
        let cfg = LstmConfig::from_keras_class(
            class,
            &serde_json::json!({
                "units": h, "activation": act, "recurrent_activation": rec,
                "return_sequences": round % 2 == 0, "return_state": round % 3 == 0,
                "go_backwards": round % 4 == 1, "zero_output_for_mask": round % 4 == 2,
                "use_bias": round != 5, "reset_after": round % 2 == 1,
            }),
        )
        .unwrap();
        let arr = |shape: &[usize], next: &mut dyn FnMut() -> f64| {
            ArrayD::from_shape_fn(shape, |_| next() * 0.8)
        };
        let gw = cfg.cell.gates() * h;
        let nb = if cfg.cell == (lstm_wgpu::Cell::Gru { reset_after: true }) {
            2 * gw
        } else {
            gw
        };
        let k = arr(&[i, gw], &mut next)
            .into_dimensionality::<Ix2>()
            .unwrap();
        let r = arr(&[h, gw], &mut next)
            .into_dimensionality::<Ix2>()
            .unwrap();
        let bias = cfg
            .use_bias
            .then(|| arr(&[nb], &mut next).into_dimensionality::<Ix1>().unwrap());
        let x = arr(&[b, t, i], &mut next)
            .into_dimensionality::<Ix3>()
            .unwrap();
        let h0 = arr(&[b, h], &mut next)
            .into_dimensionality::<Ix2>()
            .unwrap();
        let c0 = arr(&[b, h], &mut next)
            .into_dimensionality::<Ix2>()
            .unwrap();
        let mask = Array2::from_shape_fn((b, t), |(r, s)| match round % 3 {
            0 => true,
            1 => !((r == 0 && s + 1 >= t) || (r == 1 && s == 1)),
            _ => r != 0 && s != 0,
        });
        let out_shape = if cfg.return_sequences {
            vec![b, t, h]
        } else {
            vec![b, h]
        };
        let cot = LstmCotangents {
            output: arr(&out_shape, &mut next),
            h: cfg.return_state.then(|| {
                arr(&[b, h], &mut next)
                    .into_dimensionality::<Ix2>()
                    .unwrap()
            }),
            c: cfg.return_state.then(|| {
                arr(&[b, h], &mut next)
                    .into_dimensionality::<Ix2>()
                    .unwrap()
            }),
        };
        let objective = |k: &Array2<f64>, x: &Array3<f64>, h0: &Array2<f64>| -> f64 {
            let w = LstmWeights::new(&cfg, i, k.clone(), r.clone(), bias.clone()).unwrap();
            let layer = lstm_wgpu::cpu::Lstm::new(cfg.clone(), w).unwrap();
            let (call, _) = lstm_gradients(
                &layer,
                x.view(),
                Some(mask.view()),
                Some((h0.view(), c0.view())),
                &cot,
            )
            .unwrap();
            let mut s: f64 = (&call.output * &cot.output).sum();
            if let (Some(dh), Some(dc)) = (&cot.h, &cot.c) {
                s += (&call.h * dh).sum() + (&call.c * dc).sum();
            }
            s
        };
        let w = LstmWeights::new(&cfg, i, k.clone(), r.clone(), bias.clone()).unwrap();
        let layer = lstm_wgpu::cpu::Lstm::new(cfg.clone(), w).unwrap();
        let (_, g) = lstm_gradients(
            &layer,
            x.view(),
            Some(mask.view()),
            Some((h0.view(), c0.view())),
            &cot,
        )
        .unwrap();
        // (f(+eps) - f(-eps)) / 2eps of the objective with one value moved by ±eps
        let eps = 1e-6;
        let central = |f: &dyn Fn(f64) -> f64| (f(eps) - f(-eps)) / (2.0 * eps);
        let mut worst_err = 0.0f64;
        for idx in [(0, 0), (1, gw / 2), (0, gw - 1), (1, gw - 1)] {
            let fd = central(&|e| {
                let mut kp = k.clone();
                kp[idx] += e;
                objective(&kp, &x, &h0)
            });
            worst_err = worst_err.max((fd - g.kernel[idx]).abs());
        }
        for idx in [(0, 0, 0), (b - 1, t - 1, 1), (1, t / 2, 0)] {
            let fd = central(&|e| {
                let mut xp = x.clone();
                xp[idx] += e;
                objective(&k, &xp, &h0)
            });
            worst_err = worst_err.max((fd - g.x[idx]).abs());
        }
        for idx in [(0, 0), (1, h - 1)] {
            let fd = central(&|e| {
                let mut hp = h0.clone();
                hp[idx] += e;
                objective(&k, &x, &hp)
            });
            worst_err = worst_err.max((fd - g.h0[idx]).abs());
        }
        assert!(
            worst_err < 1e-7,
            "round {round} ({act}/{rec}): {worst_err:e}"
        );
    }
}

/// A NaN input makes the loss NaN: fit stops naming the epoch, step and rows, and the
/// weights are those from before that step. Mismatched targets and a zero batch are errors.
#[test]
fn diverging_training_and_bad_targets_are_errors() {
    let name = "fit_adam";
    let a = npz::<f32>(name);
    let mut net = model::<f32>(name, &a);
    let mut x = a["x"].clone().into_dimensionality::<Ix3>().unwrap();
    x[[13, 2, 1]] = f32::NAN;
    let mut opt = Optimizer::adam(0.01);
    let before = net.weights();
    let err = net
        .fit(
            x.view(),
            a["y"].view(),
            &FitOptions::new(Loss::MeanSquaredError, 8, 3),
            &mut opt,
        )
        .unwrap_err();
    match &err {
        LstmError::TrainingDiverged {
            epoch, step, rows, ..
        } => {
            assert_eq!((*epoch, *step, rows.as_str()), (1, 2, "8..16"), "{err}");
        }
        other => panic!("{other}"),
    }
    // one step (rows 0..8) was applied before the NaN batch; nothing after it
    assert_eq!(opt.iterations(), 1);
    let after = net.weights();
    assert!(after.iter().all(|w| w.iter().all(|v| v.is_finite())));
    assert_ne!(before, after);
    let short = a["y"]
        .slice_axis(ndarray::Axis(0), (0..5).into())
        .to_owned();
    let x = a["x"].clone().into_dimensionality::<Ix3>().unwrap();
    let err = net
        .fit(
            x.view(),
            short.view(),
            &FitOptions::new(Loss::MeanSquaredError, 8, 1),
            &mut opt,
        )
        .unwrap_err();
    assert!(err.to_string().contains("targets"), "{err}");
    let err = net
        .gradients(
            x.view(),
            ndarray::ArrayD::zeros(vec![32, 4]).view(),
            Loss::MeanSquaredError,
        )
        .unwrap_err();
    assert!(err.to_string().contains("targets"), "{err}");
    let err = net
        .fit(
            x.view(),
            a["y"].view(),
            &FitOptions::new(Loss::MeanSquaredError, 0, 1),
            &mut opt,
        )
        .unwrap_err();
    assert!(err.to_string().contains("batch_size"), "{err}");
    // AlphaDropout with a noise_shape is refused by name (not built); a Dropout layer,
    // GaussianNoise, GaussianDropout, AlphaDropout and a recurrent layer's dropout and
    // recurrent_dropout are trained, their rates checked
    let (config, weights) = config_and_weights("fit_gru_rnn");
    let set = |class: &str, key: &str, v: f64| {
        let mut c = config.clone();
        let layer = c["config"]["layers"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|l| l["class_name"] == class)
            .unwrap();
        layer["config"][key] = serde_json::json!(v);
        let model = KerasModel::from_config_and_weights(&c, &weights).unwrap();
        Sequential::<f32>::from_model(&model)
    };
    let net = set("GRU", "recurrent_dropout", 0.25).unwrap();
    assert!(
        matches!(net.layers[1].1, lstm_wgpu::train::TrainLayer::Recurrent { recurrent_dropout, .. } if recurrent_dropout == 0.25)
    );
    let err = set("GRU", "recurrent_dropout", 1.0).unwrap_err();
    assert!(
        err.to_string().contains("recurrent_dropout of layer gru"),
        "{err}"
    );
    let err = set("SimpleRNN", "dropout", 1.0).unwrap_err();
    assert!(
        err.to_string().contains("dropout of layer simple_rnn"),
        "{err}"
    );
    let net = set("SimpleRNN", "dropout", 0.25).unwrap();
    assert!(
        matches!(net.layers[2].1, lstm_wgpu::train::TrainLayer::Recurrent { dropout, .. } if dropout == 0.25)
    );
    let with = |layer: serde_json::Value| {
        let mut c = config.clone();
        c["config"]["layers"]
            .as_array_mut()
            .unwrap()
            .insert(2, layer);
        let model = KerasModel::from_config_and_weights(&c, &weights).unwrap();
        Sequential::<f32>::from_model(&model)
    };
    let err = with(
        serde_json::json!({"module": "keras.layers", "class_name": "AlphaDropout",
        "config": {"name": "noise", "rate": 0.1, "noise_shape": [null, 1, null]},
        "registered_name": null}),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("noise_shape") && err.to_string().contains("noise"),
        "{err}"
    );
    // regularizers and constraints (Keras's fit applies them; not built) are refused by name
    // (a weight's regularizer: by train::Functional, which the message names)
    let err = set("GRU", "kernel_regularizer", 0.0).unwrap_err();
    assert!(
        err.to_string().contains("kernel_regularizer")
            && err.to_string().contains("gru")
            && err.to_string().contains("Functional"),
        "{err}"
    );
    let err = with(serde_json::json!({"module": "keras.layers",
        "class_name": "ActivityRegularization",
        "config": {"name": "act_reg", "l1": 0.0, "l2": 0.01}, "registered_name": null}))
    .unwrap_err();
    assert!(
        err.to_string().contains("l2") && err.to_string().contains("act_reg"),
        "{err}"
    );
    let err = {
        let mut c = config.clone();
        c["config"]["layers"][2]["config"]["trainable"] = serde_json::json!(false);
        let model = KerasModel::from_config_and_weights(&c, &weights).unwrap();
        Sequential::<f32>::from_model(&model).unwrap_err()
    };
    assert!(err.to_string().contains("trainable"), "{err}");
    // GaussianNoise and GaussianDropout train (their ranges checked)
    let net = with(
        serde_json::json!({"module": "keras.layers", "class_name": "GaussianNoise",
        "config": {"name": "noise", "stddev": 0.1}, "registered_name": null}),
    )
    .unwrap();
    assert!(net.layers.iter().any(|(n, _)| n == "noise"));
    let err = with(
        serde_json::json!({"module": "keras.layers", "class_name": "GaussianDropout",
        "config": {"name": "gd", "rate": 1.5}, "registered_name": null}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("rate of layer gd"), "{err}");
    let err = with(
        serde_json::json!({"module": "keras.layers", "class_name": "Dropout",
        "config": {"name": "dropout", "rate": 1.0}, "registered_name": null}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("rate of layer dropout"), "{err}");
    let net = with(
        serde_json::json!({"module": "keras.layers", "class_name": "Dropout",
        "config": {"name": "dropout", "rate": 0.5}, "registered_name": null}),
    )
    .unwrap();
    assert!(
        matches!(net.layers[1], (ref n, lstm_wgpu::train::TrainLayer::Dropout { rate, .. }) if n == "dropout" && rate == 0.5),
        "{:?}",
        net.layers[1].0
    );
}

/// Trained weights written back: the `.keras` file (the original's config with the new
/// `model.weights.h5`) loads here and predicts what the trained network predicts, and so
/// does the `.weights.h5` alone through `load_weights`; a config of another model is an
/// error. (Keras 3 loading these files: scripts/check_saved_training.py.)
#[test]
fn trained_weights_are_written_back_as_keras_files() {
    for name in [
        "fit_gru_rnn",
        "fit_sgd_nesterov",
        "grads_cce_probs_f64",
        "fit_bidi",
        "grads_dropout_td_f64",
        "fit_pool_norm",
        "fit_bn",
    ] {
        let a = npz::<f32>(name);
        let mut net = model::<f32>(name, &a);
        let x = a["x"].clone().into_dimensionality::<Ix3>().unwrap();
        let loss = Loss::from_keras(meta(name)["loss"].as_str().unwrap()).unwrap();
        let mut opt = Optimizer::adam(0.05);
        net.fit(
            x.view(),
            a["y"].view(),
            &FitOptions::new(loss, 4, 2),
            &mut opt,
        )
        .unwrap();
        let original = std::fs::read(dir().join(format!("{name}.keras"))).unwrap();
        let bytes = net.keras_file(&original).unwrap();
        let out = std::env::temp_dir().join(format!("lstm_wgpu_trained_{name}.keras"));
        std::fs::write(&out, &bytes).unwrap();
        let mut back = KerasModel::load(&out).unwrap();
        let want = net.predict(x.view()).unwrap();
        let got = back
            .predict_inputs(&[x.clone().into_dyn().into()])
            .unwrap()
            .remove(0);
        let err = worst(&got, &want, name);
        assert!(err <= 1e-5, "{name}: reloaded model differs by {err:e}");
        // the weights as they were written
        let reread = Sequential::<f32>::from_model(&back).unwrap();
        assert_eq!(reread.weights(), net.weights(), "{name}");
        assert_eq!(reread.state(), net.state(), "{name}");
        let (config, _) = config_and_weights(name);
        let h5 = net.weights_h5(&config).unwrap();
        let cfg_path = std::env::temp_dir().join(format!("lstm_wgpu_trained_{name}.json"));
        let h5_path = std::env::temp_dir().join(format!("lstm_wgpu_trained_{name}.weights.h5"));
        std::fs::write(&cfg_path, serde_json::to_vec(&config).unwrap()).unwrap();
        std::fs::write(&h5_path, &h5).unwrap();
        let again = KerasModel::load_weights(&cfg_path, &h5_path).unwrap();
        assert_eq!(
            Sequential::<f32>::from_model(&again).unwrap().weights(),
            net.weights(),
            "{name}"
        );
        println!("{name}: reloaded, predictions within {err:.1e}");
    }
    let a = npz::<f32>("fit_adam");
    let net = model::<f32>("fit_adam", &a);
    let other = std::fs::read(dir().join("fit_gru_rnn.keras")).unwrap();
    assert!(net.keras_file(&other).is_err());
}

mod common;

/// The recorded model gradients and 20-step fits with the recurrent layers on the GPU
/// (GpuSequential): against Keras's numbers within the GPU's 1e-4.
#[test]
fn gpu_gradients_and_fit_match_keras() {
    use lstm_wgpu::train::GpuSequential;
    let Some(ctx) = common::gpu("gpu_gradients_and_fit_match_keras") else {
        return;
    };
    for name in [
        "grads_lstm_dense_f32",
        "grads_lstm_dense_f64",
        "grads_masked_f64",
        "grads_softmax_f64",
        "grads_sigmoid_f64",
        "grads_gru_rnn_f64",
        "grads_bidi_f64",
        "grads_bidi_mul_f64",
        "grads_dropout_td_f64",
        "grads_rnn_dropout_f64",
        "grads_embedding_f64",
        "grads_pool_norm_f64",
        "grads_conv_same_f64",
        "grads_embed_pool_f64",
        "grads_repeat_flatten_f64",
    ] {
        model_grads_on::<f32>(name, 1e-4, "GPU", |net, x, y, loss| {
            let net = GpuSequential::new(net, ctx.clone()).unwrap();
            let pred = net.predict(x.view()).unwrap();
            (Some(pred), net.gradients(x.view(), y.view(), loss).unwrap())
        });
    }
    // training mode: the layers with recurrent_dropout run their passes on the CPU, the
    // others on the GPU with their input dropout
    let name = "grads_rec_dropout_f32";
    let seed = training_seed(name);
    model_grads_on::<f32>(name, 1e-4, "GPU", |net, x, y, loss| {
        let net = GpuSequential::new(net, ctx.clone()).unwrap();
        (
            None,
            net.gradients_in_training(x.view(), y.view(), loss, seed)
                .unwrap(),
        )
    });
    for name in FIT_CASES {
        fit_case(name, "GPU", |net, x, y, options, opt| {
            let mut net = GpuSequential::new(net, ctx.clone()).unwrap();
            let h = net.fit(x.view(), y.view(), options, opt).unwrap();
            // the device has the trained weights: its prediction is the CPU's on them
            let cpu = net.sequential().predict(x.view()).unwrap();
            let d = worst(&net.predict(x.view()).unwrap(), &cpu, name);
            assert!(d <= 1e-4, "GPU {name}: prediction after fit {d:e}");
            (h, net.sequential().weights(), net.sequential().state())
        });
    }
}

/// Dropout layers in training mode (grads_dropout_td_f64: Dropout(0.2) on the input,
/// Dropout(0.4, noise_shape=(None, 1, 5)) after the LSTM): the masks are the seed's (the same
/// seed, the same gradients and fit; another seed, others), kept values are scaled by
/// 1 / (1 - rate), a noise_shape of 1 repeats the mask along its axis, and the training-mode
/// gradients are those of the training-mode loss (central differences in f64, the masks
/// fixed by the seed). Keras's own masks come from TensorFlow's generator and are not
/// reproduced; inference-mode gradients are checked against Keras in
/// `model_losses_and_gradients_match_gradient_tape`.
#[test]
fn dropout_in_training_mode() {
    use lstm_wgpu::train::TrainLayer;
    let name = "grads_dropout_td_f64";
    let a = npz::<f64>(name);
    let net = model::<f64>(name, &a);
    let kinds: Vec<String> = net
        .layers
        .iter()
        .map(|(n, l)| match l {
            TrainLayer::Dropout { rate, noise_shape } => format!("{n}:{rate}:{noise_shape:?}"),
            _ => n.clone(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "dropout:0.2:None",
            "lstm_24",
            "dropout_1:0.4:Some([None, Some(1), Some(5)])",
            "time_distributed"
        ]
    );
    let x = a["x"].clone().into_dimensionality::<Ix3>().unwrap();
    let y = a["y"].clone();
    let loss = Loss::MeanSquaredError;
    let g1 = net
        .gradients_in_training(x.view(), y.view(), loss, 1)
        .unwrap();
    let g1b = net
        .gradients_in_training(x.view(), y.view(), loss, 1)
        .unwrap();
    let g2 = net
        .gradients_in_training(x.view(), y.view(), loss, 2)
        .unwrap();
    let inference = net.gradients(x.view(), y.view(), loss).unwrap();
    assert_eq!(g1.weights, g1b.weights);
    assert_eq!(g1.x, g1b.x);
    assert_ne!(g1.loss, g2.loss);
    assert_ne!(g1.loss, inference.loss);
    // the input's gradient is zero exactly where the first Dropout dropped the input
    let dropped = g1.x.iter().filter(|v| **v == 0.0).count();
    let frac = dropped as f64 / g1.x.len() as f64;
    assert!((0.05..0.4).contains(&frac), "{frac}");
    // central differences of the training-mode loss (same seed, same masks)
    let mut worst_fd = 0.0f64;
    let eps = 1e-6;
    let w0 = net.weights();
    for (k, w) in w0.iter().enumerate() {
        for e in [0, w.len() / 2, w.len() - 1] {
            let at = |d: f64| {
                let mut ws = w0.clone();
                let v = ws[k].as_slice_mut().unwrap();
                v[e] += d;
                let mut n2 = net.clone();
                n2.set_weights(&ws).unwrap();
                n2.gradients_in_training(x.view(), y.view(), loss, 1)
                    .unwrap()
                    .loss
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            let an = g1.weights[k].as_slice().unwrap()[e];
            worst_fd = worst_fd.max((fd - an).abs());
        }
    }
    for e in [0, 7, 31, 50] {
        let at = |d: f64| {
            let mut x2 = x.clone();
            x2.as_slice_mut().unwrap()[e] += d;
            net.gradients_in_training(x2.view(), y.view(), loss, 1)
                .unwrap()
                .loss
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        worst_fd = worst_fd.max((fd - g1.x.as_slice().unwrap()[e]).abs());
    }
    println!("dropout: training-mode gradients vs central differences {worst_fd:.1e}");
    assert!(worst_fd < 1e-8, "{worst_fd:e}");
    // fit draws per step: the same seed, the same weights
    let fit = |seed: u64| {
        let mut n = model::<f64>(name, &a);
        let mut opt = Optimizer::adam(0.01);
        n.fit(
            x.view(),
            y.view(),
            &FitOptions::new(loss, 2, 2).seed(seed),
            &mut opt,
        )
        .unwrap();
        n.weights()
    };
    assert_eq!(fit(5), fit(5));
    assert_ne!(fit(5), fit(6));
}

/// A recurrent layer's input dropout in training mode (grads_rnn_dropout_f64: LSTM(dropout=0.3)
/// then Bidirectional(GRU(dropout=0.25))): one `[B, I]` mask per call, the same at every
/// step, as Keras's cell draws it (so dL/dx of the first layer is zero at every step of a
/// dropped (row, feature), and almost never elsewhere); central differences of the
/// training-mode loss; the same on the GPU path (the masks are drawn on the host).
#[test]
fn recurrent_input_dropout_in_training_mode() {
    use lstm_wgpu::train::{GpuSequential, TrainLayer};
    let name = "grads_rnn_dropout_f64";
    let a = npz::<f64>(name);
    let net = model::<f64>(name, &a);
    let rates: Vec<f64> =
        net.layers
            .iter()
            .filter_map(|(_, l)| match l {
                TrainLayer::Recurrent { dropout, .. }
                | TrainLayer::Bidirectional { dropout, .. } => Some(*dropout),
                _ => None,
            })
            .collect();
    assert_eq!(rates, [0.3, 0.25]);
    let x = a["x"].clone().into_dimensionality::<Ix3>().unwrap();
    let y = a["y"].clone();
    let loss = Loss::MeanSquaredError;
    let g = net
        .gradients_in_training(x.view(), y.view(), loss, 3)
        .unwrap();
    let (b, t, i) = x.dim();
    let mut dropped = 0;
    for r in 0..b {
        for f in 0..i {
            let zeros = (0..t).filter(|&s| g.x[[r, s, f]] == 0.0).count();
            assert!(
                zeros == 0 || zeros == t,
                "row {r} feature {f}: {zeros} of {t} steps"
            );
            dropped += usize::from(zeros == t);
        }
    }
    assert!(dropped > 0 && dropped < b * i, "{dropped} of {}", b * i);
    let eps = 1e-6;
    let w0 = net.weights();
    let mut worst_fd = 0.0f64;
    for (k, w) in w0.iter().enumerate() {
        for e in [0, w.len() / 3, w.len() - 1] {
            let at = |d: f64| {
                let mut ws = w0.clone();
                ws[k].as_slice_mut().unwrap()[e] += d;
                let mut n2 = net.clone();
                n2.set_weights(&ws).unwrap();
                n2.gradients_in_training(x.view(), y.view(), loss, 3)
                    .unwrap()
                    .loss
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            worst_fd = worst_fd.max((fd - g.weights[k].as_slice().unwrap()[e]).abs());
        }
    }
    for e in [1, 10, 40, 70] {
        let at = |d: f64| {
            let mut x2 = x.clone();
            x2.as_slice_mut().unwrap()[e] += d;
            net.gradients_in_training(x2.view(), y.view(), loss, 3)
                .unwrap()
                .loss
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        worst_fd = worst_fd.max((fd - g.x.as_slice().unwrap()[e]).abs());
    }
    println!("recurrent input dropout: vs central differences {worst_fd:.1e}");
    assert!(worst_fd < 1e-8, "{worst_fd:e}");
    // the GPU path: the same masks for the same seed
    let Some(ctx) = common::gpu("recurrent_input_dropout_in_training_mode") else {
        return;
    };
    let a32 = npz::<f32>(name);
    let cpu = model::<f32>(name, &a32);
    let x32 = a32["x"].clone().into_dimensionality::<Ix3>().unwrap();
    let want = cpu
        .gradients_in_training(x32.view(), a32["y"].view(), loss, 3)
        .unwrap();
    let gpu = GpuSequential::new(cpu, ctx).unwrap();
    let got = gpu
        .gradients_in_training(x32.view(), a32["y"].view(), loss, 3)
        .unwrap();
    let mut w = (want.loss - got.loss).abs() as f64;
    for (p, q) in want.weights.iter().zip(&got.weights) {
        w = w.max(worst(p, q, "gpu dropout"));
    }
    w = w.max(worst(
        &want.x.into_dyn(),
        &got.x.into_dyn(),
        "gpu dropout x",
    ));
    assert!(w <= 1e-4, "GPU vs CPU with dropout: {w:e}");
}

/// Recompute mode (`FitOptions::recompute`): the recorded fits give Keras's weights with
/// tapes of a few steps at a time too (masked Bidirectional GRU and LSTM, stacked GRU and
/// go_backwards SimpleRNN, Embedding, BatchNormalization around an LSTM).
#[test]
fn fit_in_recompute_mode_matches_keras() {
    for (name, steps) in [
        ("fit_bidi", 2),
        ("fit_gru_rnn", 4),
        ("fit_embedding", 1),
        ("fit_bn", 5),
    ] {
        fit_case(name, "CPU recompute", |mut net, x, y, options, opt| {
            let options = options.clone().recompute(steps);
            let h = net.fit(x.view(), y.view(), &options, opt).unwrap();
            (h, net.weights(), net.state())
        });
    }
}

/// A chain of stateful layers (`scripts/record_stateful_training.py`: Masking, a stateful
/// LSTM returning sequences, a stateful GRU, Dense; 3 batches of 4, 3 epochs): `fit` starts
/// each batch from the states the last one left, across epochs, as Keras's does; the
/// weights, the epoch losses and the carried states match Keras's, and a fit after
/// `reset_states` matches Keras's after each layer's `reset_states()`. Without the carried
/// states the weights differ. On the GPU (GpuSequential) too.
#[test]
fn stateful_layers_carry_their_states_through_fit() {
    let a = npz::<f32>("fit_stateful");
    let bytes = std::fs::read(dir().join("fit_stateful.keras")).unwrap();
    let model = KerasModel::from_keras_bytes(&bytes).unwrap();
    let fresh = Sequential::<f32>::from_model(&model).unwrap();
    let x = a["x"].clone().into_dimensionality::<Ix3>().unwrap();
    let y = a["y"].clone();
    let options = FitOptions::new(Loss::MeanSquaredError, 4, 3);
    let finals = |prefix: &str| -> Vec<ArrayD<f32>> {
        (0..)
            .map_while(|k| a.get(&format!("{prefix}{k}")).cloned())
            .collect()
    };
    let check = |net: &Sequential<f32>, h: &[f64], what: &str, tol: f64| {
        let w = net
            .weights()
            .iter()
            .zip(finals("final"))
            .map(|(g, k)| worst(g, &k, what))
            .fold(0.0, f64::max);
        let l = h
            .iter()
            .zip(a["epoch_loss"].iter())
            .map(|(g, k)| (g - f64::from(*k)).abs())
            .fold(0.0, f64::max);
        // (the LSTM is layer 1, the GRU layer 2, after the Masking)
        let (lh, lc) = &net.carried[&1];
        let (gh, _) = &net.carried[&2];
        let s = [
            worst(&lh.clone().into_dyn(), &a["state_lstm_h"], what),
            worst(&lc.clone().into_dyn(), &a["state_lstm_c"], what),
            worst(&gh.clone().into_dyn(), &a["state_gru_h"], what),
        ]
        .into_iter()
        .fold(0.0, f64::max);
        println!("{what}: weights {w:.1e}, epoch losses {l:.1e}, carried states {s:.1e}");
        assert!(
            w <= tol && l <= tol && s <= tol,
            "{what}: {w:e} {l:e} {s:e}"
        );
    };
    let mut net = fresh.clone();
    let mut opt = Optimizer::adam(0.01);
    let h = net.fit(x.view(), y.view(), &options, &mut opt).unwrap();
    check(&net, &h.epoch_loss, "stateful fit", 1e-5);
    // a batch of another size is refused while states are carried
    let err = net
        .predict(x.slice(ndarray::s![..3, .., ..]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("stateful layer lstm"), "{err}");
    net.reset_states();
    assert!(net.carried.is_empty());
    let h = net
        .fit(
            x.view(),
            y.view(),
            &FitOptions::new(Loss::MeanSquaredError, 4, 1),
            &mut opt,
        )
        .unwrap();
    let w = net
        .weights()
        .iter()
        .zip(finals("final_reset"))
        .map(|(g, k)| worst(g, &k, "after reset_states"))
        .fold(0.0, f64::max);
    let l = (h.epoch_loss[0] - a["epoch_loss_reset"].iter().next().unwrap().to_f64()).abs();
    println!("after reset_states: weights {w:.1e}, epoch loss {l:.1e}");
    assert!(w <= 1e-5 && l <= 1e-5, "{w:e} {l:e}");
    // the states carried make the difference: each batch from zeros instead
    let mut zeros = fresh.clone();
    let mut opt = Optimizer::adam(0.01);
    for _ in 0..3 {
        for b in 0..3 {
            let rows = ndarray::s![4 * b..4 * b + 4, .., ..];
            zeros.reset_states();
            zeros
                .fit(
                    x.slice(rows),
                    y.slice_axis(ndarray::Axis(0), (4 * b..4 * b + 4).into()),
                    &FitOptions::new(Loss::MeanSquaredError, 4, 1),
                    &mut opt,
                )
                .unwrap();
        }
    }
    let off = zeros
        .weights()
        .iter()
        .zip(finals("final"))
        .map(|(g, k)| worst(g, &k, "from zeros"))
        .fold(0.0, f64::max);
    println!("each batch from zero states: weights {off:.1e} from Keras's");
    assert!(off > 1e-3, "{off:e}");
    // the GPU path carries them the same way
    if let Some(ctx) = common::gpu("stateful_layers_carry_their_states_through_fit") {
        let mut gpu = lstm_wgpu::train::GpuSequential::new(fresh.clone(), ctx).unwrap();
        let mut opt = Optimizer::adam(0.01);
        let h = gpu.fit(x.view(), y.view(), &options, &mut opt).unwrap();
        check(gpu.sequential(), &h.epoch_loss, "GPU stateful fit", 1e-4);
    }
    // a Functional refuses stateful layers by name (it does not carry them)
    let err = lstm_wgpu::train::Functional::<f32>::from_model(&model)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stateful") && err.contains("lstm"), "{err}");
}
