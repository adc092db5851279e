#!/usr/bin/env python3
"""CPU training-step benchmark: the crate's train_bench example against Keras 3 / TensorFlow
(`model.train_on_batch`, after warm-up) on the same LSTM(units) -> Dense(1) model, MSE and
Adam, alternating the two --rounds times per shape; prints one JSON line per run and a
summary line of medians per shape. Every peer runs in a process of its own, one at a time
(Keras too: this script runs itself with --keras-only), so no peer's idle thread pool shares
the cores with the one being timed.

Usage (keras 3.15.1 + tensorflow-cpu venv):
  cargo build --release --example train_bench
  KERAS_BACKEND=tensorflow python scripts/bench_training_peers.py \
      --crate target/release/examples/train_bench [--rounds 3] [--iters 10] [--warmup 2] \
      [--shapes 32x100x32x128,...]   (batch x steps x input x units) \
      [--torch-python VENV/bin/python]   (also PyTorch's CPU step, scripts/torch_train_step.py,
                                          run by a Python that has torch)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def keras_step(b, t, i, h, iters, warmup):
    """Keras's median step in ms (in the --keras-only child process)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = keras.Sequential([keras.Input((t, i)), keras.layers.LSTM(h), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    rng = np.random.RandomState(0)
    x = rng.uniform(-0.5, 0.5, (b, t, i)).astype("float32")
    y = rng.uniform(-0.1, 0.1, (b, 1)).astype("float32")
    for _ in range(warmup + 1):
        model.train_on_batch(x, y)
    times = []
    for _ in range(iters):
        s = time.perf_counter()
        model.train_on_batch(x, y)
        times.append((time.perf_counter() - s) * 1e3)
    return statistics.median(times)


def keras_in_child(b, t, i, h, iters, warmup):
    """Runs keras_step in a fresh Python process and returns its median."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--keras-only", f"{b}x{t}x{i}x{h}",
         "--iters", str(iters), "--warmup", str(warmup)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["step_ms"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keras-only", default=None, help="BxTxIxH: time Keras alone, print JSON")
    ap.add_argument("--crate")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--shapes", default="32x100x32x128,64x50x16x64,16x200x8x32")
    ap.add_argument("--torch-python", default=None)
    a = ap.parse_args()
    if a.keras_only:
        b, t, i, h = (int(v) for v in a.keras_only.split("x"))
        print(json.dumps(dict(step_ms=keras_step(b, t, i, h, a.iters, a.warmup))))
        return
    if not a.crate:
        ap.error("--crate is required")
    for shape in a.shapes.split(","):
        b, t, i, h = (int(v) for v in shape.split("x"))
        ours, theirs, torches = [], [], []
        for r in range(a.rounds):
            out = subprocess.run(
                [a.crate, "--batch", str(b), "--steps", str(t), "--input", str(i), "--units",
                 str(h), "--iters", str(a.iters), "--warmup", str(a.warmup), "--json"],
                check=True, capture_output=True, text=True).stdout
            d = json.loads(out.strip().splitlines()[-1])
            d.update(peer="lstm-wgpu", round=r)
            print(json.dumps(d))
            ours.append(d["step_ms"])
            k = keras_in_child(b, t, i, h, a.iters, a.warmup)
            print(json.dumps(dict(peer="keras-tensorflow", shape=shape, step_ms=k, round=r)))
            theirs.append(k)
            if a.torch_python:
                here = os.path.dirname(os.path.abspath(__file__))
                out = subprocess.run(
                    [a.torch_python, os.path.join(here, "torch_train_step.py"), "--batch", str(b),
                     "--steps", str(t), "--input", str(i), "--units", str(h), "--iters",
                     str(a.iters), "--warmup", str(a.warmup)],
                    check=True, capture_output=True, text=True).stdout
                d = json.loads(out.strip().splitlines()[-1])
                d.update(round=r)
                print(json.dumps(d))
                torches.append(d["step_ms"])
        summary = dict(summary=shape, crate_step_ms=statistics.median(ours),
                       keras_step_ms=statistics.median(theirs),
                       crate_over_keras=statistics.median(ours) / statistics.median(theirs))
        if torches:
            summary.update(torch_step_ms=statistics.median(torches),
                           crate_over_torch=statistics.median(ours) / statistics.median(torches))
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
