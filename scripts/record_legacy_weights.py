#!/usr/bin/env python3
"""Writes tests/data/legacy_weights/: legacy Keras HDF5 weight files (tf-keras
`model.save_weights("X.h5")`, root attribute `layer_names`), model configs (`to_json()`),
inputs and expected predictions for loading a weight file into a model whose layer names,
layer set or layer kinds differ from the model that wrote it:

  renamed, renamed_functional   order (topological) load into renamed layers
  extra                          by_name load of a file with one more layer
  missing                        file lacks a layer of the config (order load succeeds)
  shape, count                   by_name errors (shape / weight-count mismatch)
  cudnn_lstm, cudnn_gru          CuDNNLSTM / CuDNNGRU files loaded into LSTM / GRU twins
  k3_renamed                     Keras 3 `.weights.h5` loaded into renamed layers

plus the exact Keras error messages (`*.error.txt`). Every weight is set with
`layer.set_weights` to seeded uniform(-0.6, 0.6) values, so biases are nonzero.

The tf-keras part runs in this process; the Keras 3 part (case k3_renamed and a
cross-check that Keras 3 loads extra.h5 by name to the same prediction) runs in a
child process (`--keras3`) so that the two Keras packages are never imported together.
CuDNN layers have no CPU kernel: those models are only built, given weights and saved.

Run: python scripts/record_legacy_weights.py [OUT_DIR]
     (needs tensorflow-cpu 2.21, tf-keras 2.21, keras 3.15.1, h5py, numpy)
"""
import json
import logging
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "data", "legacy_weights")


def rand_input(seed):
    return np.random.RandomState(seed).uniform(-1, 1, (2, 7, 3)).astype("float32")


def set_random(model, seed):
    """Sets every weight of every layer (Bidirectional: both directions) to seeded values."""
    for i, layer in enumerate(model.layers):
        ws = layer.get_weights()
        if ws:
            rs = np.random.RandomState(seed * 100 + i)
            layer.set_weights([rs.uniform(-0.6, 0.6, w.shape).astype("float32") for w in ws])


def save_npy(out, name, arr):
    np.save(os.path.join(out, name), np.asarray(arr, dtype="float32"))


def write_text(out, name, text):
    with open(os.path.join(out, name), "w") as f:
        f.write(text)


def write_json(out, name, model):
    text = model.to_json()
    json.loads(text)
    write_text(out, name, text)
    return text


def check_legacy_h5(path, group=None):
    """save_weights files have `layer_names` at the root; model.save files under model_weights."""
    with h5py.File(path, "r") as f:
        g = f[group] if group else f
        assert "layer_names" in g.attrs, f"{path}: no layer_names attribute in /{group or ''}"


# numpy reference of what cuDNN computes from the weights of tf-keras's CuDNNLSTM / CuDNNGRU:
# each gate block k ([in, units]) is flattened in C order and read by cuDNN as its row-major
# [units, in] matrix W (gate output = W @ x); the bias holds the input biases of every gate,
# then the recurrent ones. Gate order as stored: LSTM i, f, c, o; GRU z, r, h.
def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _cudnn_mats(k, n_gates):
    return [g.reshape(g.shape[1], g.shape[0]) for g in np.hsplit(k.astype("float64"), n_gates)]


def ref_cudnn_lstm(x, k, rk, b, reverse=False):
    u = rk.shape[0]
    W, R = _cudnn_mats(k, 4), _cudnn_mats(rk, 4)
    bw, br = b[: 4 * u].reshape(4, u), b[4 * u:].reshape(4, u)
    h = np.zeros((x.shape[0], u))
    c = np.zeros_like(h)
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    outs = [None] * x.shape[1]
    for t in steps:
        g = [x[:, t] @ W[j].T + bw[j] + h @ R[j].T + br[j] for j in range(4)]
        c = _sig(g[1]) * c + _sig(g[0]) * np.tanh(g[2])
        h = _sig(g[3]) * np.tanh(c)
        outs[t] = h
    return np.stack(outs, 1), h


def ref_cudnn_gru(x, k, rk, b, reverse=False):
    u = rk.shape[0]
    W, R = _cudnn_mats(k, 3), _cudnn_mats(rk, 3)
    bw, br = b[: 3 * u].reshape(3, u), b[3 * u:].reshape(3, u)
    h = np.zeros((x.shape[0], u))
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    outs = [None] * x.shape[1]
    for t in steps:
        z = _sig(x[:, t] @ W[0].T + bw[0] + h @ R[0].T + br[0])
        r = _sig(x[:, t] @ W[1].T + bw[1] + h @ R[1].T + br[1])
        hh = np.tanh(x[:, t] @ W[2].T + bw[2] + r * (h @ R[2].T + br[2]))
        h = (1 - z) * hh + z * h
        outs[t] = h
    return np.stack(outs, 1), h


def ref_cudnn_model(model, x, cell):
    """Sequential [cuDNN(seq), Bidirectional(cuDNN), Dense] computed with numpy."""
    w1 = model.layers[0].get_weights()
    w2 = model.layers[1].get_weights()
    wd = model.layers[2].get_weights()
    seq, _ = cell(x.astype("float64"), *w1)
    _, hf = cell(seq, *w2[:3])
    _, hb = cell(seq, *w2[3:], reverse=True)
    return np.concatenate([hf, hb], 1) @ wd[0] + wd[1]


# ---------------------------------------------------------------------------------------
# tf-keras (Keras 2) cases
# ---------------------------------------------------------------------------------------


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def tf_keras_cases(out):
    import tensorflow as tf
    import tf_keras
    from tf_keras import layers as L

    try:
        from tf_keras.src.layers.rnn.cudnn_gru import CuDNNGRU
        from tf_keras.src.layers.rnn.cudnn_lstm import CuDNNLSTM
    except ImportError:  # other tf-keras layouts
        CuDNNLSTM = tf_keras.layers.CuDNNLSTM
        CuDNNGRU = tf_keras.layers.CuDNNGRU

    tf.random.set_seed(0)
    np.random.seed(0)
    P = lambda n: os.path.join(out, n)  # noqa: E731
    notes = {}

    def predict(model, x):
        return model(x, training=False).numpy().astype("float32")

    def from_json(text, seed):
        m = tf_keras.models.model_from_json(text)
        set_random(m, seed)
        return m

    def error_of(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            return f"{type(e).__name__}: {e}", str(e)
        return None, None

    # 1. renamed ------------------------------------------------------------------------
    fm = tf_keras.Sequential([
        L.Input(shape=(7, 3)),
        L.LSTM(5, return_sequences=True, name="lstm_1"),
        L.LSTM(4, name="lstm_2"),
        L.Dense(2, name="dense_1"),
    ])
    set_random(fm, 1)
    fm.save_weights(P("renamed.h5"))
    check_legacy_h5(P("renamed.h5"))
    cm = tf_keras.Sequential([
        L.Input(shape=(7, 3)),
        L.LSTM(5, return_sequences=True, name="lstm_3"),
        L.Dropout(0.5, name="dropout_9"),
        L.LSTM(4, name="lstm_4"),
        L.Dense(2, name="dense_7"),
    ])
    text = write_json(out, "renamed.json", cm)
    x = rand_input(101)
    save_npy(out, "renamed.input.npy", x)
    m = from_json(text, 2)
    m.load_weights(P("renamed.h5"))
    y = predict(m, x)
    np.testing.assert_allclose(y, predict(fm, x), atol=1e-6)  # same weights as the file model
    save_npy(out, "renamed.expected.npy", y)
    m2 = from_json(text, 2)
    init = predict(m2, x)
    m2.load_weights(P("renamed.h5"), by_name=True)
    y2 = predict(m2, x)
    assert np.array_equal(y2, init), "by_name loaded something although no name matches"
    assert np.abs(y2 - y).max() > 1e-3
    print(f"renamed: by_name=True loads nothing (prediction == random init), "
          f"max |by_name - order| = {np.abs(y2 - y).max():.4f}")

    # 2. renamed_functional -------------------------------------------------------------
    def functional(names):
        inp = L.Input((7, 3), name=names[0])
        enc = L.LSTM(6, return_sequences=True, name=names[1])(inp)
        g = L.GRU(3, name=names[2])(enc)
        d = L.Dense(4, activation="tanh", name=names[3])(g)
        gap = L.GlobalAveragePooling1D(name=names[4])(enc)
        cat = L.Concatenate(name=names[5])([gap, d])
        o = L.Dense(2, name=names[6])(cat)
        return tf_keras.Model(inp, o, name=names[7])

    fm = functional(["seq", "enc", "gru_old", "d_old", "gap_old", "cat_old", "out_old", "old"])
    set_random(fm, 3)
    fm.save_weights(P("renamed_functional.h5"))
    check_legacy_h5(P("renamed_functional.h5"))
    cm = functional(["seq_new", "encoder_new", "gru_new", "d_new", "gap_new", "cat_new",
                     "out_new", "new"])
    text = write_json(out, "renamed_functional.json", cm)
    x = rand_input(102)
    save_npy(out, "renamed_functional.input.npy", x)
    m = from_json(text, 4)
    m.load_weights(P("renamed_functional.h5"))
    y = predict(m, x)
    np.testing.assert_allclose(y, predict(fm, x), atol=1e-6)
    save_npy(out, "renamed_functional.expected.npy", y)
    print("renamed_functional: file layer order", [l.name for l in fm.layers])
    print("renamed_functional: config layer order", [l.name for l in m.layers])

    # 3. extra --------------------------------------------------------------------------
    fm = tf_keras.Sequential([
        L.Input((7, 3)),
        L.LSTM(5, return_sequences=True, name="encoder"),
        L.LSTM(4, name="lstm_b"),
        L.Dense(3, name="head"),
        L.Dense(2, name="extra_head"),
    ])
    set_random(fm, 5)
    fm.save_weights(P("extra.h5"))
    check_legacy_h5(P("extra.h5"))

    def extra_config(head_units=3, lstm_b_bias=True, last=None):
        ls = [
            L.Input((7, 3)),
            L.LSTM(5, return_sequences=True, name="encoder"),
            L.LSTM(4, name="lstm_b", use_bias=lstm_b_bias),
            L.Dense(head_units, name="head"),
        ]
        if last is not None:
            ls.append(last)
        return tf_keras.Sequential(ls)

    text = write_json(out, "extra.json", extra_config())
    x = rand_input(103)
    save_npy(out, "extra.input.npy", x)
    m = from_json(text, 6)
    m.load_weights(P("extra.h5"), by_name=True)
    y = predict(m, x)
    # the prefix of the file model computes the same thing
    prefix = tf_keras.Model(fm.inputs, fm.get_layer("head").output)
    np.testing.assert_allclose(y, predict(prefix, x), atol=1e-6)
    save_npy(out, "extra.expected.npy", y)
    full, msg = error_of(lambda: from_json(text, 6).load_weights(P("extra.h5")))
    assert msg is not None, "order load of extra.h5 into extra.json did not raise"
    write_text(out, "extra.order_error.txt", msg)
    notes["extra.order_error.txt"] = full
    print("extra: order load ->", full)

    # 4. missing ------------------------------------------------------------------------
    text = write_json(out, "missing.json", extra_config(last=L.Dense(2, name="new_head")))
    x = rand_input(104)
    save_npy(out, "missing.input.npy", x)
    m = from_json(text, 7)
    full, msg = error_of(lambda: m.load_weights(P("extra.h5")))
    if msg is not None:
        write_text(out, "missing.order_error.txt", msg)
        notes["missing.order_error.txt"] = full
        print("missing: order load ->", full)
    else:
        y = predict(m, x)
        np.testing.assert_allclose(y, predict(fm, x), atol=1e-6)  # extra_head -> new_head
        save_npy(out, "missing.expected_order.npy", y)
        notes["missing"] = "order load succeeded (4 and 4 weighted layers)"
        print("missing: order load SUCCEEDS, extra_head's weights go to new_head")
    m = from_json(text, 7)
    init_new_head = [w.copy() for w in m.get_layer("new_head").get_weights()]
    m.load_weights(P("extra.h5"), by_name=True)
    for a, b in zip(init_new_head, m.get_layer("new_head").get_weights()):
        assert np.array_equal(a, b)
    np.testing.assert_array_equal(m.get_layer("head").get_weights()[0],
                                  fm.get_layer("head").get_weights()[0])
    print("missing: by_name load leaves new_head at its initial weights")

    # 5. shape --------------------------------------------------------------------------
    text = write_json(out, "shape.json", extra_config(head_units=6))
    full, msg = error_of(lambda: from_json(text, 8).load_weights(P("extra.h5"), by_name=True))
    assert msg is not None, "by_name load with a shape mismatch did not raise"
    write_text(out, "shape.by_name_error.txt", msg)
    notes["shape.by_name_error.txt"] = full
    print("shape: by_name ->", full)
    cap = Capture()
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addHandler(cap)
    m = from_json(text, 8)
    head_init = [w.copy() for w in m.get_layer("head").get_weights()]
    m.load_weights(P("extra.h5"), by_name=True, skip_mismatch=True)
    tf_logger.removeHandler(cap)
    assert cap.messages, "skip_mismatch=True logged no warning"
    for a, b in zip(head_init, m.get_layer("head").get_weights()):
        assert np.array_equal(a, b)
    np.testing.assert_array_equal(m.get_layer("lstm_b").get_weights()[0],
                                  fm.get_layer("lstm_b").get_weights()[0])
    notes["shape.skip_mismatch_warnings"] = cap.messages
    for w in cap.messages:
        print("shape: by_name skip_mismatch warning:", w)

    # 6. count --------------------------------------------------------------------------
    text = write_json(out, "count.json", extra_config(lstm_b_bias=False))
    full, msg = error_of(lambda: from_json(text, 9).load_weights(P("extra.h5"), by_name=True))
    assert msg is not None, "by_name load with a weight-count mismatch did not raise"
    write_text(out, "count.by_name_error.txt", msg)
    notes["count.by_name_error.txt"] = full
    print("count: by_name ->", full)

    # 7./8. cuDNN -----------------------------------------------------------------------
    def cudnn_case(name, cudnn_cls, twin_cls, twin_kw, n1, n2, seed, xseed, twin_suffix, cell):
        cm = tf_keras.Sequential([
            L.Input((7, 3)),
            cudnn_cls(5, return_sequences=True, name=n1),
            L.Bidirectional(cudnn_cls(3), name=n2),
            L.Dense(2, name="d"),
        ])
        set_random(cm, seed)
        cm.save_weights(P(f"{name}.h5"))
        check_legacy_h5(P(f"{name}.h5"))
        write_json(out, f"{name}.cudnn.json", cm)
        try:
            cm.save(P(f"{name}.model.h5"), save_format="h5")
            check_legacy_h5(P(f"{name}.model.h5"), "model_weights")
            with h5py.File(P(f"{name}.model.h5"), "r") as f:
                assert "model_config" in f.attrs
                assert "optimizer_weights" not in f
                with h5py.File(P(f"{name}.h5"), "r") as g:
                    a, b = [], []
                    g.visititems(lambda n, o: a.append((n, o[()])) if isinstance(o, h5py.Dataset) else None)
                    f["model_weights"].visititems(
                        lambda n, o: b.append((n, o[()])) if isinstance(o, h5py.Dataset) else None)
                    assert [n for n, _ in a] == [n for n, _ in b]
                    assert all(np.array_equal(u, v) for (_, u), (_, v) in zip(a, b))
            notes[f"{name}.model.h5"] = "model.save worked"
            print(f"{name}: model.save(h5) worked")
        except Exception as e:  # noqa: BLE001
            if os.path.exists(P(f"{name}.model.h5")):
                os.remove(P(f"{name}.model.h5"))
            notes[f"{name}.model.h5"] = f"model.save failed: {type(e).__name__}: {e}"
            print(f"{name}: model.save(h5) FAILED: {type(e).__name__}: {e}")
        twin = tf_keras.Sequential([
            L.Input((7, 3)),
            twin_cls(5, return_sequences=True, name=n1, **twin_kw),
            L.Bidirectional(twin_cls(3, **twin_kw), name=n2),
            L.Dense(2, name="d"),
        ])
        text = write_json(out, f"{name}.{twin_suffix}.json", twin)
        x = rand_input(xseed)
        save_npy(out, f"{name}.input.npy", x)
        t = from_json(text, seed + 50)
        t.load_weights(P(f"{name}.h5"))
        y = predict(t, x)
        save_npy(out, f"{name}.expected.npy", y)
        ref = ref_cudnn_model(cm, x, cell)
        diff = float(np.abs(ref - y).max())
        print(f"{name}: max |numpy cuDNN reference - converted twin| = {diff:.3g}")
        assert diff < 1e-5, diff
        # the Dense layer is copied as is
        np.testing.assert_array_equal(t.get_layer("d").get_weights()[0],
                                      cm.get_layer("d").get_weights()[0])
        return cm, t

    cudnn_case("cudnn_lstm", CuDNNLSTM, L.LSTM, {}, "c1", "c2", 10, 107, "lstm",
               ref_cudnn_lstm)
    cudnn_case("cudnn_gru", CuDNNGRU, L.GRU, {"reset_after": True}, "g1", "g2", 11, 108, "gru",
               ref_cudnn_gru)
    return notes


# ---------------------------------------------------------------------------------------
# Keras 3 cases (child process)
# ---------------------------------------------------------------------------------------


def keras3_cases(out):
    import keras
    from keras import layers as L

    assert keras.__version__.startswith("3."), keras.__version__
    keras.utils.set_random_seed(0)
    P = lambda n: os.path.join(out, n)  # noqa: E731

    def predict(model, x):
        return np.asarray(model(x, training=False)).astype("float32")

    # 9. k3_renamed
    def model(names):
        return keras.Sequential([
            keras.Input((7, 3)),
            L.LSTM(5, return_sequences=True, name=names[0]),
            L.GRU(4, name=names[1]),
            L.Dense(2, name=names[2]),
        ])

    fm = model(["alpha", "beta", "gamma"])
    set_random(fm, 20)
    fm.save_weights(P("k3_renamed.weights.h5"))
    cm = model(["x1", "x2", "x3"])
    text = write_json(out, "k3_renamed.json", cm)
    x = rand_input(109)
    save_npy(out, "k3_renamed.input.npy", x)
    m = keras.models.model_from_json(text)
    set_random(m, 21)
    m.load_weights(P("k3_renamed.weights.h5"))
    y = predict(m, x)
    np.testing.assert_allclose(y, predict(fm, x), atol=1e-6)
    save_npy(out, "k3_renamed.expected.npy", y)
    with h5py.File(P("k3_renamed.weights.h5"), "r") as f:
        paths = []
        f.visititems(lambda n, o: paths.append(f"{n} {o.shape}") if isinstance(o, h5py.Dataset) else None)
    print("k3_renamed: datasets", paths)

    # 10. cross-check: Keras 3 loads extra.h5 by name like tf-keras
    with open(P("extra.json")) as f:
        cfg = json.load(f)["config"]
    m = keras.Sequential([
        keras.Input((7, 3)),
        L.LSTM(5, return_sequences=True, name="encoder"),
        L.LSTM(4, name="lstm_b"),
        L.Dense(3, name="head"),
    ])
    assert [l["config"]["name"] for l in cfg["layers"] if l["class_name"] != "InputLayer"] == \
        ["encoder", "lstm_b", "head"]
    set_random(m, 22)
    m.load_weights(P("extra.h5"), by_name=True)
    y = predict(m, np.load(P("extra.input.npy")))
    exp = np.load(P("extra.expected.npy"))
    diff = float(np.abs(y - exp).max())
    print(f"cross-check: Keras 3 by_name load of extra.h5, max |keras3 - tf_keras| = {diff:.3g}")
    assert diff <= 1e-6, diff


# ---------------------------------------------------------------------------------------


def main():
    args = [a for a in sys.argv[1:] if a != "--keras3"]
    out = os.path.abspath(args[0] if args else DEFAULT_OUT)
    if "--keras3" in sys.argv:
        keras3_cases(out)
        return
    os.makedirs(out, exist_ok=True)
    notes = tf_keras_cases(out)
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.pop("TF_USE_LEGACY_KERAS", None)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--keras3", out],
                   env=env, check=True)
    print(json.dumps(notes, indent=1))


if __name__ == "__main__":
    main()
