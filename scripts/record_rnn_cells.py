#!/usr/bin/env python3
"""Writes tests/data/rnn_cells/: Keras 3.15.1 models with `RNN(cell)` layers (LSTMCell,
GRUCell, SimpleRNNCell) and `RNN(StackedRNNCells([...]))`, with inputs and Keras's
predictions, for the loader's `RNN` support. Every weight is set to seeded uniform(-0.6, 0.6)
values. Run: KERAS_BACKEND=tensorflow python scripts/record_rnn_cells.py [OUT_DIR]
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
from keras import layers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "rnn_cells")
os.makedirs(OUT, exist_ok=True)


def randomize(model, seed):
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        w = layer.get_weights()
        if w:
            layer.set_weights([rng.uniform(-0.6, 0.6, a.shape).astype("float32") for a in w])


def save(name, model, inputs):
    model.save(os.path.join(OUT, f"{name}.keras"))
    outs = model.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    for k, x in enumerate(inputs):
        np.save(os.path.join(OUT, f"{name}.input.{k}.npy" if len(inputs) > 1 else f"{name}.input.npy"), x)
    for k, o in enumerate(outs):
        np.save(os.path.join(OUT, f"{name}.expected.{k}.npy" if len(outs) > 1 else f"{name}.expected.npy"),
                np.asarray(o, dtype="float32"))
    print(name, [tuple(np.shape(o)) for o in outs])


rng = np.random.RandomState(0)
x = rng.uniform(-1, 1, (3, 8, 4)).astype("float32")
x[1, 5:] = 0.0  # masked by the Masking layers
x[2, 2:] = 0.0

# 1. one cell per RNN: the three cells, options on the RNN wrapper and on the cell
inp = keras.Input((None, 4), name="x")
m = layers.Masking(0.0)(inp)
a = layers.RNN(layers.LSTMCell(5, recurrent_activation="hard_sigmoid"), return_sequences=True,
               name="rnn_lstm")(m)
b = layers.RNN(layers.GRUCell(4, reset_after=False), return_sequences=True, go_backwards=True,
               name="rnn_gru")(a)
c, h = layers.RNN(layers.SimpleRNNCell(3, activation="relu"), return_state=True,
                  name="rnn_simple")(b)
out = layers.Concatenate()([c, h])
model = keras.Model(inp, out)
randomize(model, 1)
save("single_cells", model, [x])

# 2. stacked cells: outputs and every cell's state
inp = keras.Input((None, 4), name="x")
m = layers.Masking(0.0)(inp)
outs = layers.RNN(layers.StackedRNNCells([layers.LSTMCell(5), layers.GRUCell(3),
                                          layers.SimpleRNNCell(2)]),
                  return_sequences=True, return_state=True, name="stack")(m)
model = keras.Model(inp, outs)
randomize(model, 2)
save("stacked_cells", model, [x])

# 3. stacked cells with initial states from another input and the last output only
inp = keras.Input((None, 4), name="x")
h0 = keras.Input((5,), name="h0")
c0 = keras.Input((5,), name="c0")
g0 = keras.Input((3,), name="g0")
y = layers.RNN(layers.StackedRNNCells([layers.LSTMCell(5), layers.GRUCell(3)]),
               name="stack")(inp, initial_state=[[h0, c0], [g0]])
model = keras.Model([inp, h0, c0, g0], y)
randomize(model, 3)
save("stacked_initial_state", model,
     [x, rng.uniform(-1, 1, (3, 5)).astype("float32"), rng.uniform(-1, 1, (3, 5)).astype("float32"),
      rng.uniform(-1, 1, (3, 3)).astype("float32")])
