#!/usr/bin/env python3
"""Records `tests/data/keras/dot_normalize_keras3.keras` and `dot_normalize_keras2.h5`: the
same cosine-similarity model (`Dot(axes=1, normalize=True)` of two 2-D inputs) saved by Keras
3 and by tf-keras (Keras 2), with the inputs `dot_normalize.input.{0,1}.npy` (vectors of
squared norm near 1e-13, between Keras 3's floor and Keras 2's, and ordinary ones) and each
Keras's predictions (`dot_normalize_keras3.output.npy`, `dot_normalize_keras2.output.npy`):
Keras 3 normalizes by `min(rsqrt(sum x^2), 1e7)`, Keras 2 by `rsqrt(max(sum x^2, 1e-12))`.

Run: python scripts/record_dot_normalize.py (Keras 3.15.1 and tf-keras 2.21.0 installed)
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
import tf_keras

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "keras")
rng = np.random.RandomState(5)
a = rng.normal(size=(6, 3)).astype("float32")
b = rng.normal(size=(6, 3)).astype("float32")
a[:3] *= 2e-7
b[:3] *= 2e-7
a[3] = 0.0
np.save(os.path.join(OUT, "dot_normalize.input.0.npy"), a)
np.save(os.path.join(OUT, "dot_normalize.input.1.npy"), b)
for k, lib in (("keras3", keras), ("keras2", tf_keras)):
    x = lib.Input((3,), name="a")
    y = lib.Input((3,), name="b")
    m = lib.Model([x, y], lib.layers.Dot(axes=1, normalize=True)([x, y]))
    path = os.path.join(OUT, f"dot_normalize_{k}." + ("keras" if k == "keras3" else "h5"))
    m.save(path)
    out = np.asarray(m.predict([a, b], verbose=0))
    np.save(os.path.join(OUT, f"dot_normalize_{k}.output.npy"), out)
    print(k, out.ravel())
