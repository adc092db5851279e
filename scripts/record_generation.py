#!/usr/bin/env python3
"""Writes tests/data/generation/: a character-level generator (Keras 3.15.1: Embedding ->
LSTM -> Dense softmax over a window of token ids, as Keras's text-generation example and
textgenrnn build it) and the tokens of Python generation loops run on it, for
`lstm_wgpu::generate`. The loop: predict the next-token distribution from the last
`window` tokens, temper it (`p ** (1 / temperature)`, renormalised; temperature 0 is the
argmax), keep the `top_k` most likely (ties by index), renormalise, and draw by inverse CDF
with a recorded uniform `u` (the first index whose cumulative probability is >= u), all in
float64. The uniforms are saved so that the Rust loop replays the same draws.
Run: KERAS_BACKEND=tensorflow python scripts/record_generation.py [OUT_DIR]
"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
from keras import layers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "generation")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(21)
VOCAB, WINDOW = 24, 10

inp = keras.Input((WINDOW,), dtype="int32", name="tokens")
h = layers.Embedding(VOCAB, 8, name="embedding")(inp)
h = layers.LSTM(16, name="lstm")(h)
out = layers.Dense(VOCAB, activation="softmax", name="next")(h)
model = keras.Model(inp, out)
for layer in model.layers:
    w = layer.get_weights()
    if w:
        layer.set_weights([rng.uniform(-1.2, 1.2, a.shape).astype("float32") for a in w])
model.save(os.path.join(OUT, "char_lstm.keras"))


def pick(p, temperature, top_k, u):
    p = np.asarray(p, dtype="float64")
    if temperature == 0:
        return int(np.argmax(p))
    p = p ** (1.0 / temperature)
    p = p / p.sum()
    if top_k is not None:
        order = np.argsort(-p, kind="stable")[:top_k]
        keep = np.zeros_like(p)
        keep[order] = p[order]
        p = keep / keep.sum()
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u, side="left"), len(p) - 1))


cases = []
for name, temperature, top_k, steps in [("greedy", 0.0, None, 40), ("t07", 0.7, None, 60),
                                        ("t12_top5", 1.2, 5, 60)]:
    seed = [int(t) for t in rng.randint(1, VOCAB, WINDOW)]
    tokens = list(seed)
    uniforms = [float(u) for u in rng.random_sample(steps)]
    for k in range(steps):
        window = np.asarray(tokens[-WINDOW:], dtype="int32")[None]
        p = model.predict(window, verbose=0)[0]
        tokens.append(pick(p, temperature, top_k, uniforms[k]))
    cases.append({"name": name, "temperature": temperature, "top_k": top_k, "window": WINDOW,
                  "seed": seed, "uniforms": uniforms, "tokens": tokens[WINDOW:]})
    print(name, tokens[WINDOW:][:20])
with open(os.path.join(OUT, "char_lstm.loops.json"), "w") as f:
    json.dump(cases, f, indent=1)
