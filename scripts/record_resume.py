#!/usr/bin/env python3
"""Writes tests/data/training/resume_*: training resumed from a `.keras` file that Keras 3.15.1
(TensorFlow backend, CPU) saved after `model.fit`, its optimizer's state inside
(`model.weights.h5`'s `optimizer/vars/0..N`: iterations, learning_rate, then the slots in the
optimizer's own order) and its `compile_config` in `config.json`.

Per case NAME.keras (compiled and fitted for `steps_before` steps, then saved) and
NAME.npz + NAME.json: the inputs x0, ..., targets y0, ..., the weights when saved (w0, ...),
and after `keras.saving.load_model(NAME.keras)` then `fit(..., epochs, shuffle=False)` more:
the trainable weights final0, ..., the non-trainable state final_state0, ..., epoch_loss.
The json gives batch_size, epochs, the losses and their weights.

Run: KERAS_BACKEND=tensorflow python scripts/record_resume.py [OUT_DIR]
"""
import json
import os
import sys
import zlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
from keras import layers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "data", "training")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(3)


def chain():
    """Sequential: LSTM, Dense."""
    return keras.Sequential([keras.Input((5, 3)), layers.LSTM(4), layers.Dense(2)]), 1


def graph():
    """Functional, two inputs: a frozen Dense (its weights not the optimizer's), a GRU, a
    BatchNormalization (its moving statistics are not the optimizer's either), two outputs."""
    a = keras.Input((5, 3), name="a")
    b = keras.Input((4,), name="b")
    frozen = layers.Dense(3, name="frozen")
    h = layers.GRU(4)(a)
    g = layers.BatchNormalization()(frozen(b))
    out1 = layers.Dense(2, name="out1")(layers.Concatenate()([h, g]))
    out2 = layers.Dense(1, activation="sigmoid", name="out2")(h)
    frozen.trainable = False
    return keras.Model([a, b], [out1, out2], name="resume_graph"), 2


# name, model, optimizer, losses, loss weights
CASES = [
    ("resume_adam", chain, lambda: keras.optimizers.Adam(learning_rate=0.01, clipnorm=1.0),
     ["mse"], [1.0]),
    ("resume_rmsprop", chain,
     lambda: keras.optimizers.RMSprop(learning_rate=0.005, momentum=0.5, centered=True),
     ["mse"], [1.0]),
    ("resume_sgd", chain,
     lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
     ["mse"], [1.0]),
    ("resume_adamw_graph", graph, lambda: keras.optimizers.AdamW(learning_rate=0.01),
     ["mse", "binary_crossentropy"], [1.0, 0.5]),
]

LOSSES = {"mse": keras.losses.MeanSquaredError, "binary_crossentropy": keras.losses.BinaryCrossentropy}

for name, build, optimizer, losses, weights in CASES:
    rng.seed(zlib.crc32(name.encode()))
    keras.utils.set_random_seed(zlib.crc32(name.encode()) % 1000)
    model, n_in = build()
    n = 12
    xs = [rng.normal(size=(n,) + tuple(i.shape[1:])).astype("float32") for i in model.inputs]
    ys = []
    for o, loss in zip(model.outputs, losses):
        shape = (n,) + tuple(o.shape[1:])
        ys.append(rng.uniform(0, 1, shape).astype("float32") if loss == "binary_crossentropy"
                  else rng.normal(size=shape).astype("float32"))
    model.compile(optimizer=optimizer(), loss=[LOSSES[l]() for l in losses],
                  loss_weights=weights)
    x = xs if len(xs) > 1 else xs[0]
    y = ys if len(ys) > 1 else ys[0]
    batch, epochs = 4, 3
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    path = os.path.join(OUT, f"{name}.keras")
    model.save(path)
    arrays = {}
    for k, v in enumerate(xs):
        arrays[f"x{k}"] = v
    for k, v in enumerate(ys):
        arrays[f"y{k}"] = v
    for k, w in enumerate(model.trainable_weights):
        arrays[f"w{k}"] = np.asarray(w)
    # resumed from the file, as a user would
    back = keras.saving.load_model(path)
    assert int(back.optimizer.iterations.numpy()) == 9, back.optimizer.iterations
    hist = back.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    # (and the same from the model in memory: the file kept the whole state)
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    for a, b in zip(back.weights, model.weights):
        assert np.array_equal(np.asarray(a), np.asarray(b)), a.path
    for k, w in enumerate(back.trainable_weights):
        arrays[f"final{k}"] = np.asarray(w)
    state = [w for w in back.non_trainable_weights
             if w.path.endswith(("moving_mean", "moving_variance"))]
    for k, w in enumerate(state):
        arrays[f"final_state{k}"] = np.asarray(w)
    arrays["epoch_loss"] = np.asarray(hist.history["loss"], dtype="float64")
    np.savez(os.path.join(OUT, f"{name}.npz"), **arrays)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(dict(batch_size=batch, epochs=epochs, steps_before=9, losses=losses,
                       loss_weights=weights), f, indent=1)
    print(name, hist.history["loss"][-1])
