#!/usr/bin/env python3
"""Writes tests/data/training/resume_k2_*: training resumed from Keras 2 `.h5` files that
tf-keras 2.21 (Keras 2, TensorFlow 2.21, CPU) saved after `model.fit`: the root attribute
`training_config` (the losses and `optimizer_config`) and the group `optimizer_weights`
(attribute `weight_names`, one dataset per variable), in both of Keras 2's optimizer
formats:

- the optimizers of TF 2.11 and later (`tf.keras.optimizers.Adam`, ...): `iteration:0`, then
  `Adam/m/<weight>:0`, `Adam/v/<weight>:0` per weight, interleaved; RMSprop's
  `RMSprop/velocity/...`, `RMSprop/momentum/...`, `RMSprop/average_gradient/...` by kind;
- the legacy ones (`tf.keras.optimizers.legacy.*`, every Keras 2 before TF 2.11):
  `Adam/iter:0`, then `Adam/<weight>/m:0` for every weight, then every `.../v:0`; RMSprop's
  `rms`, `momentum`, `mg`.

Per case NAME.h5 (compiled and fitted 9 steps, then saved) and NAME.npz + NAME.json as
scripts/record_resume.py writes them: inputs x0.., targets y0.., and after
`tf_keras.models.load_model(NAME.h5)` then `fit(..., epochs, shuffle=False)`: the trainable
weights final0.., epoch_loss.

Run (a venv with tf-keras==2.21.0): python scripts/record_resume_h5.py [OUT_DIR]
"""
import json
import os
import sys
import zlib

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tf_keras as keras
from tf_keras import layers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "data", "training")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(5)


def chain():
    """Sequential: LSTM, Dense."""
    return keras.Sequential([keras.Input((5, 3)), layers.LSTM(4), layers.Dense(2)])


def graph():
    """Functional: a GRU, two outputs (MSE and binary cross-entropy, losses by name)."""
    a = keras.Input((5, 3), name="a")
    h = layers.GRU(4)(a)
    out1 = layers.Dense(2, name="out1")(h)
    out2 = layers.Dense(1, activation="sigmoid", name="out2")(h)
    return keras.Model(a, [out1, out2], name="resume_k2_graph")


# name, model, optimizer, losses (by output name), loss weights
CASES = [
    ("resume_k2_adam", chain,
     lambda: keras.optimizers.Adam(learning_rate=0.01, clipnorm=1.0), ["mse"], None),
    ("resume_k2_legacy_rmsprop", chain,
     lambda: keras.optimizers.legacy.RMSprop(learning_rate=0.005, momentum=0.5, centered=True),
     ["mse"], None),
    ("resume_k2_legacy_adam_graph", graph,
     lambda: keras.optimizers.legacy.Adam(learning_rate=0.01),
     ["mse", "binary_crossentropy"], [1.0, 0.5]),
]

for name, build, optimizer, losses, weights in CASES:
    rng.seed(zlib.crc32(name.encode()))
    keras.utils.set_random_seed(zlib.crc32(name.encode()) % 1000)
    model = build()
    n = 12
    xs = [rng.normal(size=(n,) + tuple(i.shape[1:])).astype("float32") for i in model.inputs]
    ys = []
    for o, loss in zip(model.outputs, losses):
        shape = (n,) + tuple(o.shape[1:])
        ys.append(rng.uniform(0, 1, shape).astype("float32") if loss == "binary_crossentropy"
                  else rng.normal(size=shape).astype("float32"))
    if len(losses) > 1:
        loss = dict(zip(model.output_names, losses))
        lw = dict(zip(model.output_names, weights))
    else:
        loss, lw = losses[0], None
    model.compile(optimizer=optimizer(), loss=loss, loss_weights=lw)
    x = xs if len(xs) > 1 else xs[0]
    y = ys if len(ys) > 1 else ys[0]
    batch, epochs = 4, 3
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    path = os.path.join(OUT, f"{name}.h5")
    model.save(path)
    arrays = {}
    for k, v in enumerate(xs):
        arrays[f"x{k}"] = v
    for k, v in enumerate(ys):
        arrays[f"y{k}"] = v
    for k, w in enumerate(model.trainable_weights):
        arrays[f"w{k}"] = np.asarray(w)
    back = keras.models.load_model(path)
    assert int(back.optimizer.iterations.numpy()) == 9, back.optimizer.iterations
    hist = back.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    # (and the same from the model in memory: the file kept the whole state)
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    for a, b in zip(back.weights, model.weights):
        assert np.array_equal(np.asarray(a), np.asarray(b)), a.name
    for k, w in enumerate(back.trainable_weights):
        arrays[f"final{k}"] = np.asarray(w)
    arrays["epoch_loss"] = np.asarray(hist.history["loss"], dtype="float64")
    np.savez(os.path.join(OUT, f"{name}.npz"), **arrays)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(dict(batch_size=batch, epochs=epochs, steps_before=9, losses=losses,
                       loss_weights=weights), f, indent=1)
    print(name, hist.history["loss"][-1])
