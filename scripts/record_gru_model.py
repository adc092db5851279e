#!/usr/bin/env python3
"""Records tests/data/keras/gru_stack.*: a Sequential model mixing Masking, Bidirectional(GRU),
a GRU with reset_after=False, SimpleRNN and Dense(softmax), saved by Keras, with an input
(some steps zero, so masked) and Keras's prediction. Run with keras 3.15.1 + tensorflow-cpu:
python scripts/record_gru_model.py tests/data/keras
"""
import sys

import keras
import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/keras"
np.random.seed(0)
keras.utils.set_random_seed(0)
m = keras.Sequential([
    keras.Input((12, 5)),
    keras.layers.Masking(0.0),
    keras.layers.Bidirectional(keras.layers.GRU(16, return_sequences=True)),
    keras.layers.GRU(8, reset_after=False, return_sequences=True),
    keras.layers.SimpleRNN(6),
    keras.layers.Dense(3, activation="softmax"),
])
x = np.random.randn(4, 12, 5).astype(np.float32)
x[1, 8:] = 0
x[2, :3] = 0
m.save(f"{out}/gru_stack.keras")
np.save(f"{out}/gru_stack.input.npy", x)
np.save(f"{out}/gru_stack.expected.npy", m.predict(x, verbose=0))
