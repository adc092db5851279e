"""TimeDistributed around layers other than Dense (tests/data/keras/time_distributed.*):
input (B, 3, 5, 2) -> TimeDistributed(LSTM(4)) and TimeDistributed(Flatten()) -> Concatenate
-> TimeDistributed(LayerNormalization()) -> GRU(3). Run with keras 3.15.1 (TensorFlow):

  python scripts/record_time_distributed_model.py tests/data/keras
"""
import os
import sys

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

out = sys.argv[1]
keras.utils.set_random_seed(2)
x = keras.Input((3, 5, 2))
a = keras.layers.TimeDistributed(keras.layers.LSTM(4))(x)
b = keras.layers.TimeDistributed(keras.layers.Flatten())(x)
c = keras.layers.Concatenate()([a, b])
n = keras.layers.TimeDistributed(keras.layers.LayerNormalization())(c)
m = keras.Model(x, keras.layers.GRU(3)(n), name="time_distributed")
# trained-looking LayerNormalization weights, so that gamma and beta matter
ln = m.layers[4].layer
ln.set_weights([np.linspace(0.5, 1.5, 14).astype("float32"), np.linspace(-0.2, 0.2, 14).astype("float32")])
xi = np.random.RandomState(3).randn(2, 3, 5, 2).astype("float32")
m.save(f"{out}/time_distributed.keras")
np.save(f"{out}/time_distributed.input.npy", xi)
np.save(f"{out}/time_distributed.expected.npy", m.predict(xi, verbose=0))
