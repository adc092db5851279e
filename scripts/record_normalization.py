#!/usr/bin/env python3
"""Writes tests/data/normalization/: Keras 3.15.1 time-series models that normalise inside the
model with the `Normalization` preprocessing layer (adapted on data: its mean, variance and
count are saved as weights; or given mean/variance in its config; several axes; invert), with
inputs and Keras's predictions. Run: KERAS_BACKEND=tensorflow python scripts/record_normalization.py
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
from keras import layers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "normalization")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(5)


def randomize(model):
    for layer in model.layers:
        if isinstance(layer, layers.Normalization):
            continue
        w = layer.get_weights()
        if w:
            layer.set_weights([rng.uniform(-0.6, 0.6, a.shape).astype("float32") for a in w])


def save(name, model, x):
    model.save(os.path.join(OUT, f"{name}.keras"))
    np.save(os.path.join(OUT, f"{name}.input.npy"), x)
    y = model.predict(x, verbose=0)
    np.save(os.path.join(OUT, f"{name}.expected.npy"), np.asarray(y, dtype="float32"))
    print(name, np.shape(y))


train = (rng.normal(3.0, 2.5, (64, 10, 4)) * np.array([1, 10, 0.1, 1e-4])).astype("float32")
x = (rng.normal(3.0, 2.5, (3, 10, 4)) * np.array([1, 10, 0.1, 1e-4])).astype("float32")

# 1. adapted on the last axis (per feature), then an LSTM forecaster
norm = layers.Normalization(axis=-1, name="norm")
norm.adapt(train)
inp = keras.Input((None, 4))
y = layers.Dense(1, name="head")(layers.LSTM(8, name="lstm")(norm(inp)))
model = keras.Model(inp, y)
randomize(model)
save("adapted", model, x)

# 2. mean and variance in the config (a scalar variance of 0 hits the epsilon), axis over
# time and features, and the inverse transform at the output
inp = keras.Input((10, 4))
n = layers.Normalization(axis=(1, 2), name="norm_tf")
n.adapt(train)
h = layers.LSTM(4, return_sequences=True, name="lstm")(n(inp))
given = layers.Normalization(axis=-1, mean=[0.5, -1.0, 2.0, 0.0], variance=[4.0, 0.25, 1.0, 0.0],
                             invert=True, name="denorm")(h)
scalar = layers.Normalization(axis=None, mean=1.5, variance=9.0, name="scalar")(given)
model = keras.Model(inp, scalar)
randomize(model)
save("config_axes_invert", model, x)
