#!/usr/bin/env python3
"""Records tests/data/keras/dot_prelu.*: a functional model with Dot (axes (2, 2), and
normalize=True with axes 1 on 2-D tensors), PReLU (per-feature alpha shared over time) and
Softmax, saved by Keras, with its two inputs and Keras's outputs.
Run with keras 3.15.1 + tensorflow-cpu: python scripts/record_dot_prelu_model.py tests/data/keras
"""
import sys

import keras
import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/keras"
keras.utils.set_random_seed(1)
a = keras.Input((5, 4))
b = keras.Input((6, 4))
seq = keras.layers.LSTM(4, return_sequences=True)(a)
p = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.3), shared_axes=[1])(seq)
scores = keras.layers.Dot(axes=(2, 2))([p, b])          # (B, 5, 6)
weights = keras.layers.Softmax()(scores)
pooled_a = keras.layers.GlobalAveragePooling1D()(p)      # (B, 4)
pooled_b = keras.layers.GlobalAveragePooling1D()(b)
cos = keras.layers.Dot(axes=1, normalize=True)([pooled_a, pooled_b])  # (B, 1)
m = keras.Model([a, b], [weights, cos])
rng = np.random.default_rng(3)
xa = rng.standard_normal((3, 5, 4)).astype(np.float32)
xb = rng.standard_normal((3, 6, 4)).astype(np.float32)
ya, yb = m.predict([xa, xb], verbose=0)
m.save(f"{out}/dot_prelu.keras")
np.save(f"{out}/dot_prelu.input.0.npy", xa)
np.save(f"{out}/dot_prelu.input.1.npy", xb)
np.save(f"{out}/dot_prelu.expected.0.npy", ya)
np.save(f"{out}/dot_prelu.expected.1.npy", yb)
