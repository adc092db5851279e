"""A model with models as layers (tests/data/keras/nested.*): Masking(0.0), then a Sequential
encoder (LSTM(5, return_sequences=True) -> Dense(4)) and a functional head (GRU(6)) called as
layers of a functional model, then Dense(2); the mask flows through both nested models (the
input's second row ends in two all-zero steps). Keras 3 keeps their weights under their own keys
(layers/sequential/layers/lstm/...). Run with keras 3.15.1 (TensorFlow backend):

  python scripts/record_nested_model.py tests/data/keras
"""
import os
import sys

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

out = sys.argv[1]
keras.utils.set_random_seed(1)
inner = keras.Sequential(
    [keras.Input((None, 3)), keras.layers.LSTM(5, return_sequences=True), keras.layers.Dense(4)],
    name="encoder",
)
x = keras.Input((None, 3))
a = keras.Input((None, 4))
head = keras.Model(a, keras.layers.GRU(6)(a), name="head")
masked = keras.layers.Masking(0.0)(x)
m = keras.Model(x, keras.layers.Dense(2)(head(inner(masked))), name="nested")
xi = np.random.RandomState(0).randn(2, 7, 3).astype("float32")
xi[1, 5:] = 0.0
m.save(f"{out}/nested.keras")
m.save_weights(f"{out}/nested.weights.h5")
np.save(f"{out}/nested.input.npy", xi)
np.save(f"{out}/nested.expected.npy", m.predict(xi, verbose=0))
