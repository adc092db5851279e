#!/usr/bin/env python3
"""Checks that Keras 3 loads the files the crate's training path writes: for each NAME the
test `trained_weights_are_written_back_as_keras_files` (tests/training.rs) left in the
temporary directory, `keras.saving.load_model(NAME.keras)` and the original model with
`load_weights(NAME.weights.h5)` are run on the case's inputs, and their predictions are
compared with the crate's (the predict example on the same .keras file).

Run after the test: KERAS_BACKEND=tensorflow python scripts/check_saved_training.py \
    --predict target/release/examples/predict
"""
import argparse
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "training")
ap = argparse.ArgumentParser()
ap.add_argument("--predict", required=True)
ap.add_argument("--cases", default="fit_gru_rnn,fit_sgd_nesterov,grads_cce_probs_f64,fit_bidi,grads_dropout_td_f64,fit_pool_norm,fit_bn")
a = ap.parse_args()
tmp = tempfile.gettempdir()
ok = True
for name in a.cases.split(","):
    saved = os.path.join(tmp, f"lstm_wgpu_trained_{name}.keras")
    x = np.load(os.path.join(DATA, f"{name}.npz"))["x"].astype("float32")
    model = keras.saving.load_model(saved)
    y_keras = np.asarray(model.predict(x, verbose=0), dtype="float64")
    original = keras.saving.load_model(os.path.join(DATA, f"{name}.keras"))
    original.load_weights(os.path.join(tmp, f"lstm_wgpu_trained_{name}.weights.h5"))
    y_weights = np.asarray(original.predict(x, verbose=0), dtype="float64")
    xin = os.path.join(tmp, f"{name}.x.npy")
    yout = os.path.join(tmp, f"{name}.y.npy")
    np.save(xin, x)
    subprocess.run([a.predict, "--model", saved, "--input", xin, "--output", yout,
                    "--backend", "cpu"], check=True, capture_output=True)
    y_crate = np.load(yout).astype("float64")
    d1 = float(np.abs(y_keras - y_crate).max())
    d2 = float(np.abs(y_weights - y_crate).max())
    moved = max(float(np.abs(w1 - w0).max()) for w1, w0 in
                zip(model.get_weights(), keras.saving.load_model(
                    os.path.join(DATA, f"{name}.keras")).get_weights()))
    print(f"{name}: load_model vs crate {d1:.1e}, load_weights vs crate {d2:.1e}, "
          f"weights moved by up to {moved:.2f}")
    ok &= d1 <= 1e-5 and d2 <= 1e-5 and moved > 1e-3
sys.exit(0 if ok else 1)
