#!/usr/bin/env python3
"""Writes tests/data/training/fit_stateful.*: `model.fit` of a chain of stateful recurrent
layers, recorded from Keras 3.15.1 (TensorFlow backend, CPU). A stateful layer starts each
call from the state its previous call left (`RNN.call`: `initial_state = self.states`, then
`self.states` assigned the final ones), in training as in inference, across batches and
epochs alike (`fit` resets nothing); no gradient reaches those states.

The model: Masking (zero rows masked), LSTM(5, stateful, return_sequences), GRU(3,
stateful), Dense(2), batch_shape (4, 6, 3); Adam(0.01), MSE; 12 rows (3 batches), 3 epochs,
shuffle=False. fit_stateful.keras is the model before fitting; fit_stateful.npz holds x, y,
the trainable weights after (final0, ...), each stateful layer's states after
(state_lstm_h, state_lstm_c, state_gru_h), the epoch losses, and the same fit once more
after each layer's `reset_states()` (final_reset0, ..., epoch_loss_reset).

Run: KERAS_BACKEND=tensorflow python scripts/record_stateful_training.py [OUT_DIR]
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
from keras import layers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "data", "training")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(11)
keras.utils.set_random_seed(11)

model = keras.Sequential([
    keras.Input(batch_shape=(4, 6, 3)),
    layers.Masking(0.0),
    layers.LSTM(5, stateful=True, return_sequences=True, name="lstm"),
    layers.GRU(3, stateful=True, name="gru"),
    layers.Dense(2, name="dense"),
])
x = rng.normal(size=(12, 6, 3)).astype("float32")
# (masked steps: a row's last two, another's first, one row's middle)
x[1, 4:] = 0.0
x[5, 0] = 0.0
x[10, 2:4] = 0.0
y = rng.normal(size=(12, 2)).astype("float32")
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
model.save(os.path.join(OUT, "fit_stateful.keras"))
arrays = dict(x=x, y=y)
hist = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
for k, w in enumerate(model.trainable_weights):
    arrays[f"final{k}"] = np.asarray(w)
lstm, gru = model.get_layer("lstm"), model.get_layer("gru")
arrays["state_lstm_h"] = np.asarray(lstm.states[0])
arrays["state_lstm_c"] = np.asarray(lstm.states[1])
arrays["state_gru_h"] = np.asarray(gru.states[0])
arrays["epoch_loss"] = np.asarray(hist.history["loss"], dtype="float64")
for l in (lstm, gru):
    l.reset_states()
hist = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
for k, w in enumerate(model.trainable_weights):
    arrays[f"final_reset{k}"] = np.asarray(w)
arrays["epoch_loss_reset"] = np.asarray(hist.history["loss"], dtype="float64")
np.savez(os.path.join(OUT, "fit_stateful.npz"), **arrays)
print("fit_stateful", arrays["epoch_loss"], arrays["epoch_loss_reset"])
