#!/usr/bin/env python3
"""Checks that Keras 3 resumes training from the compiled `.keras` files the crate writes: for
each case the test `compiled_files_keep_the_optimizer_state` (tests/resume.rs) left in the
temporary directory (trained 9 steps past the recorded file, then written with
`keras_file_compiled`), `keras.saving.load_model` must compile the model with the crate's
optimizer and losses, load the optimizer's state (18 iterations), and 9 more steps of
`fit` on the case's data must give the weights the crate's own 9 more steps gave.

Run after the test: KERAS_BACKEND=tensorflow python scripts/check_resumed.py
"""
import json
import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data", "training")
CASES = ["resume_adam", "resume_rmsprop", "resume_sgd", "resume_adamw_graph"]
tmp = tempfile.gettempdir()
ok = True
for name in CASES:
    a = np.load(os.path.join(DATA, f"{name}.npz"))
    meta = json.load(open(os.path.join(DATA, f"{name}.json")))
    xs = [a[f"x{k}"] for k in range(10) if f"x{k}" in a]
    ys = [a[f"y{k}"] for k in range(10) if f"y{k}" in a]
    m = keras.saving.load_model(os.path.join(tmp, f"lstm_wgpu_{name}.keras"))
    it = int(m.optimizer.iterations.numpy())
    m.fit(xs if len(xs) > 1 else xs[0], ys if len(ys) > 1 else ys[0],
          batch_size=meta["batch_size"], epochs=meta["epochs"], shuffle=False, verbose=0)
    worst = 0.0
    for k, w in enumerate(m.trainable_weights):
        want = np.load(os.path.join(tmp, f"lstm_wgpu_{name}.final{k}.npy"))
        worst = max(worst, float(np.max(np.abs(np.asarray(w) - want))))
    good = it == 18 and worst <= 1e-4
    ok &= good
    print(f"{name}: {type(m.optimizer).__name__} at {it} iterations, "
          f"9 more steps within {worst:.1e} of the crate's {'ok' if good else 'FAILED'}")

# a model saved uncompiled, trained by the crate (SGD with momentum 0.5 and clipvalue 0.5,
# 4 steps) and written compiled (tests/resume.rs uncompiled_files_are_written_compiled)
a = np.load(os.path.join(DATA, "graph_fit_graph_logits.npz"))
m = keras.saving.load_model(os.path.join(tmp, "lstm_wgpu_compiled_graph_logits.keras"))
it = int(m.optimizer.iterations.numpy())
m.fit(a["x0"], [a["y0"], a["y1"], a["y2"]], batch_size=4, epochs=2, shuffle=False, verbose=0)
worst = max(float(np.max(np.abs(np.asarray(w) - np.load(
    os.path.join(tmp, f"lstm_wgpu_compiled_graph_logits.final{k}.npy")))))
    for k, w in enumerate(m.trainable_weights))
good = it == 4 and worst <= 1e-4 and m.optimizer.clipvalue == 0.5
ok &= good
print(f"compiled graph_logits: {type(m.optimizer).__name__} at {it} iterations, "
      f"4 more steps within {worst:.1e} of the crate's {'ok' if good else 'FAILED'}")
sys.exit(0 if ok else 1)
