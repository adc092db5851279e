#!/usr/bin/env python3
"""Writes tests/data/mha/: Keras 3.15.1 models with MultiHeadAttention (self and cross
attention, masks from Masking layers, use_causal_mask, key/value dims, no bias, attention
scores returned, an LSTM+MHA hybrid), inputs and Keras's predictions. Weights are seeded
uniform(-0.6, 0.6). Run: KERAS_BACKEND=tensorflow python scripts/record_mha.py [OUT_DIR]
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
from keras import layers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "mha")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(11)


def randomize(model):
    for layer in model.layers:
        w = layer.get_weights()
        if w:
            layer.set_weights([rng.uniform(-0.6, 0.6, a.shape).astype("float32") for a in w])


def save(name, model, inputs):
    model.save(os.path.join(OUT, f"{name}.keras"))
    outs = model.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    for k, x in enumerate(inputs):
        np.save(os.path.join(OUT, f"{name}.input.{k}.npy" if len(inputs) > 1 else f"{name}.input.npy"), x)
    for k, o in enumerate(outs):
        np.save(os.path.join(OUT, f"{name}.expected.{k}.npy" if len(outs) > 1 else f"{name}.expected.npy"),
                np.asarray(o, dtype="float32"))
    print(name, [np.shape(o) for o in outs])


x = rng.uniform(-1, 1, (3, 7, 8)).astype("float32")
x[1, 5:] = 0.0
x[2, 1:] = 0.0
y = rng.uniform(-1, 1, (3, 5, 6)).astype("float32")
y[0, 3:] = 0.0

# 1. self-attention behind a mask, attention scores returned too
inp = keras.Input((None, 8), name="x")
m = layers.Masking(0.0)(inp)
out, scores = layers.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")(
    m, m, return_attention_scores=True)
model = keras.Model(inp, [out, scores])
randomize(model)
save("self_masked", model, [x])

# 2. cross-attention: query and value of other lengths and widths, value_dim, no bias,
# a causal mask, key = value
q = keras.Input((None, 8), name="q")
v = keras.Input((None, 6), name="v")
mq = layers.Masking(0.0)(q)
mv = layers.Masking(0.0)(v)
o = layers.MultiHeadAttention(num_heads=3, key_dim=2, value_dim=4, use_bias=False,
                              name="cross")(mq, mv, use_causal_mask=True)
model = keras.Model([q, v], o)
randomize(model)
save("cross_causal", model, [x[:, :5], y])

# 3. LSTM + MHA hybrid with a residual and LayerNormalization, a separate key input
inp = keras.Input((7, 8), name="x")
h = layers.LSTM(6, return_sequences=True, name="lstm")(inp)
a = layers.MultiHeadAttention(num_heads=2, key_dim=4, output_shape=6, name="mha")(h, h, h)
h = layers.LayerNormalization(name="ln")(layers.Add()([h, a]))
o = layers.Dense(2, name="head")(layers.GlobalAveragePooling1D()(h))
model = keras.Model(inp, o)
randomize(model)
save("lstm_mha", model, [x])
