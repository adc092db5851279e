#!/usr/bin/env python3
"""Writes tests/data/custom_layers/: models with custom (user-defined) layers, as a loader
meets them in the wild:

  awa_k3             Keras 3 `.keras`: Embedding(mask_zero) -> LSTM(seq) ->
                     textgenrnn/DeepMoji `AttentionWeightedAverage` -> Dense(softmax)
  awa_k3_attention   the same with return_attention=True, two model outputs
                     (prediction, attention weights)
  awa_k2             tf-keras `model.save(..., save_format="h5")` of the awa_k3 architecture,
                     plus `save_weights` (legacy layout) and the `to_json()` of a renamed copy
                     that can only be loaded by order
  ctc_k3             Keras 3 `.keras`: the OCR example's `CTCLayer` (two inputs, computes
                     the CTC loss with `add_loss` and returns `y_pred`)

Every weight is set with `layer.set_weights` to seeded uniform(-0.6, 0.6) float32 values.
Expected outputs are `model.predict`. Each saved model is reloaded (with `custom_objects`)
and must predict the same; the attention maths is also checked against numpy.

The tf-keras part runs in this process; the Keras 3 part runs in a child process
(`--keras3`) so that the two Keras packages are never imported together.

Run: python scripts/record_custom_layers.py [OUT_DIR]
     (needs tensorflow-cpu 2.21, tf-keras 2.21, keras 3.15.1, h5py, numpy)
"""
import io
import json
import os
import subprocess
import sys
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "data", "custom_layers")
EPSILON = 1e-7


def awa_input():
    """int32 [3, 9] token ids in 1..29; row 1 ends in 3 zeros (padding), row 2 in 6."""
    x = np.random.RandomState(7).randint(1, 30, (3, 9)).astype("int32")
    x[1, 6:] = 0
    x[2, 3:] = 0
    return x


def ctc_inputs():
    rs = np.random.RandomState(8)
    image = rs.uniform(-1, 1, (2, 12, 5)).astype("float32")
    labels = rs.randint(1, 6, (2, 4)).astype("float32")
    return image, labels


def set_random(model, seed):
    """Sets every weight of every layer (Bidirectional: both directions) to seeded values."""
    for i, layer in enumerate(model.layers):
        ws = layer.get_weights()
        if ws:
            rs = np.random.RandomState(seed * 100 + i)
            layer.set_weights([rs.uniform(-0.6, 0.6, w.shape).astype("float32") for w in ws])


def save_npy(out, name, arr, dtype="float32"):
    np.save(os.path.join(out, name), np.asarray(arr, dtype=dtype))


def ref_awa(h, w, mask):
    """numpy AttentionWeightedAverage: h [B, T, D], w [D, 1], mask [B, T] (bool)."""
    h = h.astype("float64")
    logits = (h @ w.astype("float64"))[:, :, 0]
    ai = np.exp(logits - logits.max(axis=-1, keepdims=True))  # max over ALL steps
    ai = ai * mask.astype("float64")
    att = ai / (ai.sum(axis=1, keepdims=True) + EPSILON)
    return (h * att[:, :, None]).sum(axis=1), att


def ref_softmax_dense(v, k, b):
    z = v @ k.astype("float64") + b.astype("float64")
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def check_ref(model, x, y, att=None, sub=None):
    """Checks the AttentionWeightedAverage + Dense part of `model` against numpy, from the
    LSTM's sequence output (`sub`: a model from the input to the LSTM's output)."""
    h = np.asarray(sub.predict(x, verbose=0))
    w = model.get_layer(name_of(model, "attention")).get_weights()[0]
    k, b = model.get_layer(name_of(model, "dense")).get_weights()
    v, a = ref_awa(h, w, x != 0)
    d1 = float(np.abs(ref_softmax_dense(v, k, b) - y).max())
    d2 = float(np.abs(a - att).max()) if att is not None else 0.0
    assert d1 < 1e-5 and d2 < 1e-5, (d1, d2)
    return max(d1, d2)


def name_of(model, prefix):
    return [l.name for l in model.layers if l.name.startswith(prefix)][0]


def weight_listing(f):
    rows = []
    f.visititems(lambda n, o: rows.append((n, o.shape)) if isinstance(o, h5py.Dataset) else None)
    return rows


def legacy_group(path, layer, root=None):
    """(weight_names, shapes) of a legacy h5 layer group."""
    with h5py.File(path, "r") as f:
        g = f[root] if root else f
        assert "layer_names" in g.attrs
        grp = g[layer]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in grp.attrs["weight_names"]]
        return names, [tuple(grp[n].shape) for n in names]


# ---------------------------------------------------------------------------------------
# tf-keras (Keras 2)
# ---------------------------------------------------------------------------------------


def tf_keras_cases(out):
    import tensorflow as tf
    import tf_keras
    from tf_keras import backend as K
    from tf_keras import initializers
    from tf_keras.layers import InputSpec, Layer
    from tf_keras import layers as L

    assert K.epsilon() == EPSILON

    class AttentionWeightedAverage(Layer):
        """textgenrnn / DeepMoji (tf-keras)."""

        def __init__(self, return_attention=False, **kwargs):
            self.init = initializers.get("uniform")
            self.supports_masking = True
            self.return_attention = return_attention
            super().__init__(**kwargs)

        def build(self, input_shape):
            self.input_spec = [InputSpec(ndim=3)]
            assert len(input_shape) == 3
            self.W = self.add_weight(shape=(input_shape[2], 1),
                                     name="{}_W".format(self.name),
                                     initializer=self.init)
            super().build(input_shape)

        def call(self, x, mask=None):
            logits = K.dot(x, self.W)
            x_shape = K.shape(x)
            logits = K.reshape(logits, (x_shape[0], x_shape[1]))
            ai = K.exp(logits - K.max(logits, axis=-1, keepdims=True))
            if mask is not None:
                mask = K.cast(mask, K.floatx())
                ai = ai * mask
            att_weights = ai / (K.sum(ai, axis=1, keepdims=True) + K.epsilon())
            weighted_input = x * K.expand_dims(att_weights)
            result = K.sum(weighted_input, axis=1)
            if self.return_attention:
                return [result, att_weights]
            return result

        def get_output_shape_for(self, input_shape):
            return self.compute_output_shape(input_shape)

        def compute_output_shape(self, input_shape):
            output_len = input_shape[2]
            if self.return_attention:
                return [(input_shape[0], output_len), (input_shape[0], input_shape[1])]
            return (input_shape[0], output_len)

        def compute_mask(self, input, input_mask=None):
            if isinstance(input_mask, list):
                return [None] * len(input_mask)
            return None

        def get_config(self):
            config = super().get_config()
            config["return_attention"] = self.return_attention
            return config

    tf.random.set_seed(0)
    np.random.seed(0)
    P = lambda n: os.path.join(out, n)  # noqa: E731
    custom = {"AttentionWeightedAverage": AttentionWeightedAverage}
    report = {}

    def build(names):
        inp = L.Input((None,), dtype="int32", name="tokens")
        e = L.Embedding(30, 8, mask_zero=True, name=names[0])(inp)
        h = L.LSTM(6, return_sequences=True, name=names[1])(e)
        a = AttentionWeightedAverage(name=names[2])(h)
        o = L.Dense(3, activation="softmax", name=names[3])(a)
        return tf_keras.Model(inp, o, name=names[4]), h

    x = awa_input()
    m, h = build(["embedding", "lstm", "attention", "dense", "awa_k2"])
    set_random(m, 30)
    y = m.predict(x, verbose=0)
    d = check_ref(m, x, y, sub=tf_keras.Model(m.inputs, h))
    print(f"awa_k2: max |numpy reference - tf-keras| = {d:.3g}")
    m.save(P("awa_k2.h5"), save_format="h5")
    save_npy(out, "awa_k2.expected.npy", y)
    with h5py.File(P("awa_k2.h5"), "r") as f:
        assert "model_config" in f.attrs and "optimizer_weights" not in f
        cfg = json.loads(f.attrs["model_config"])
    report["awa_k2.h5 config entry"] = [l for l in cfg["config"]["layers"]
                                        if l["class_name"] == "AttentionWeightedAverage"][0]
    report["awa_k2.h5 model_weights/attention"] = legacy_group(P("awa_k2.h5"), "attention",
                                                               "model_weights")
    r = tf_keras.models.load_model(P("awa_k2.h5"), custom_objects=custom, compile=False)
    np.testing.assert_array_equal(r.predict(x, verbose=0), y)

    m.save_weights(P("awa_k2_weights.h5"))
    report["awa_k2_weights.h5 attention"] = legacy_group(P("awa_k2_weights.h5"), "attention")
    with h5py.File(P("awa_k2_weights.h5"), "r") as f:
        report["awa_k2_weights.h5 layer_names"] = [n.decode() if isinstance(n, bytes) else n
                                                   for n in f.attrs["layer_names"]]

    rn, _ = build(["emb_new", "lstm_new", "attention_new", "dense_new", "awa_k2_new"])
    text = rn.to_json()
    json.loads(text)
    with open(P("awa_k2.json"), "w") as f:
        f.write(text)
    c = tf_keras.models.model_from_json(text, custom_objects=custom)
    set_random(c, 31)
    init = c.predict(x, verbose=0)
    c.load_weights(P("awa_k2_weights.h5"))
    y2 = c.predict(x, verbose=0)
    assert np.abs(init - y2).max() > 1e-3
    np.testing.assert_allclose(y2, y, atol=1e-6)
    save_npy(out, "awa_k2_renamed.expected.npy", y2)
    report["awa_k2 renamed max |renamed - original|"] = float(np.abs(y2 - y).max())
    # by name nothing matches: stays at the random init
    c2 = tf_keras.models.model_from_json(text, custom_objects=custom)
    set_random(c2, 31)
    c2.load_weights(P("awa_k2_weights.h5"), by_name=True)
    assert np.array_equal(c2.predict(x, verbose=0), init)
    print("awa_k2: order load into renamed copy == original; by_name loads nothing")
    return report


# ---------------------------------------------------------------------------------------
# Keras 3 (child process)
# ---------------------------------------------------------------------------------------


def keras3_cases(out):
    import keras
    from keras import initializers, ops
    from keras.layers import InputSpec, Layer
    from keras import layers as L

    assert keras.__version__ == "3.15.1", keras.__version__
    assert keras.config.epsilon() == EPSILON

    @keras.saving.register_keras_serializable(package="textgenrnn")
    class AttentionWeightedAverage(Layer):
        """textgenrnn / DeepMoji (Keras 3)."""

        def __init__(self, return_attention=False, **kwargs):
            self.init = initializers.get("uniform")
            self.supports_masking = True
            self.return_attention = return_attention
            super().__init__(**kwargs)

        def build(self, input_shape):
            self.input_spec = [InputSpec(ndim=3)]
            assert len(input_shape) == 3
            self.W = self.add_weight(shape=(input_shape[2], 1),
                                     name="{}_W".format(self.name),
                                     initializer=self.init)
            super().build(input_shape)

        def call(self, x, mask=None):
            logits = ops.matmul(x, self.W)
            x_shape = ops.shape(x)
            logits = ops.reshape(logits, (x_shape[0], x_shape[1]))
            ai = ops.exp(logits - ops.max(logits, axis=-1, keepdims=True))
            if mask is not None:
                mask = ops.cast(mask, keras.config.floatx())
                ai = ai * mask
            att_weights = ai / (ops.sum(ai, axis=1, keepdims=True) + keras.config.epsilon())
            weighted_input = x * ops.expand_dims(att_weights, -1)
            result = ops.sum(weighted_input, axis=1)
            if self.return_attention:
                return [result, att_weights]
            return result

        def compute_output_shape(self, input_shape):
            output_len = input_shape[2]
            if self.return_attention:
                return [(input_shape[0], output_len), (input_shape[0], input_shape[1])]
            return (input_shape[0], output_len)

        def compute_mask(self, input, input_mask=None):
            if isinstance(input_mask, list):
                return [None] * len(input_mask)
            return None

        def get_config(self):
            config = super().get_config()
            config["return_attention"] = self.return_attention
            return config

    @keras.saving.register_keras_serializable(package="ocr")
    class CTCLayer(Layer):
        """Keras OCR example (captcha_ocr): computes the CTC loss at training time and
        returns y_pred unchanged. Blank = class 0 (labels use 1..5)."""

        def __init__(self, name=None, **kwargs):
            super().__init__(name=name, **kwargs)

        def call(self, y_true, y_pred):
            batch_len = ops.shape(y_true)[0]
            input_length = ops.shape(y_pred)[1]
            label_length = ops.shape(y_true)[1]
            input_length = input_length * ops.ones((batch_len,), dtype="int32")
            label_length = label_length * ops.ones((batch_len,), dtype="int32")
            loss = ops.ctc_loss(ops.cast(y_true, "int32"), y_pred, label_length,
                                input_length, mask_index=0)
            self.add_loss(ops.mean(loss))
            return y_pred

        def compute_output_shape(self, y_true_shape, y_pred_shape):
            return y_pred_shape

    keras.utils.set_random_seed(0)
    P = lambda n: os.path.join(out, n)  # noqa: E731
    custom = {"AttentionWeightedAverage": AttentionWeightedAverage, "CTCLayer": CTCLayer}
    report = {}

    def keras_entry(path, cls_name):
        with zipfile.ZipFile(path) as z:
            cfg = json.loads(z.read("config.json"))
            with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
                rows = weight_listing(f)
        entry = [l for l in cfg["config"]["layers"] if l["class_name"] == cls_name][0]
        return entry, rows

    def reload_check(path, inputs, expected):
        r = keras.models.load_model(path, custom_objects=custom, compile=False)
        got = r.predict(inputs, verbose=0)
        got = got if isinstance(got, (list, tuple)) else [got]
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(np.asarray(g), e)
        return r

    # awa_k3 / awa_k3_attention ---------------------------------------------------------
    x = awa_input()
    save_npy(out, "awa.input.npy", x, dtype="int32")
    for name, ret_att in (("awa_k3", False), ("awa_k3_attention", True)):
        keras.backend.clear_session()  # fresh auto-names (the mask op is `not_equal`)
        inp = L.Input((None,), dtype="int32", name="tokens")
        e = L.Embedding(30, 8, mask_zero=True, name="embedding")(inp)
        h = L.LSTM(6, return_sequences=True, name="lstm")(e)
        a = AttentionWeightedAverage(return_attention=ret_att, name="attention")(h)
        if ret_att:
            v, att = a
            o = L.Dense(3, activation="softmax", name="dense")(v)
            m = keras.Model(inp, [o, att], name=name)
        else:
            o = L.Dense(3, activation="softmax", name="dense")(a)
            m = keras.Model(inp, o, name=name)
        set_random(m, 40 if not ret_att else 41)
        y = m.predict(x, verbose=0)
        ys = [np.asarray(t) for t in (y if ret_att else [y])]
        d = check_ref(m, x, ys[0], ys[1] if ret_att else None, sub=keras.Model(inp, h))
        print(f"{name}: max |numpy reference - keras 3| = {d:.3g}")
        if ret_att:
            # padded steps get exactly zero weight; each row sums to ~1
            assert np.all(ys[1][x == 0] == 0)
            np.testing.assert_allclose(ys[1].sum(1), 1, atol=1e-5)
        m.save(P(f"{name}.keras"))
        if ret_att:
            for i, t in enumerate(ys):
                save_npy(out, f"{name}.expected.{i}.npy", t)
        else:
            save_npy(out, f"{name}.expected.npy", ys[0])
            m.save_weights(P(f"{name}.weights.h5"))
            m2 = keras.models.clone_model(m)
            set_random(m2, 42)
            m2.load_weights(P(f"{name}.weights.h5"))
            np.testing.assert_array_equal(np.asarray(m2.predict(x, verbose=0)), ys[0])
            with h5py.File(P(f"{name}.weights.h5"), "r") as f:
                report[f"{name}.weights.h5 datasets"] = weight_listing(f)
        reload_check(P(f"{name}.keras"), x, ys)
        entry, rows = keras_entry(P(f"{name}.keras"), "AttentionWeightedAverage")
        report[f"{name}.keras config entry"] = entry
        report[f"{name}.keras model.weights.h5 datasets"] = rows
        report[f"{name} weight variable path"] = [w.path for w in m.get_layer("attention").weights]

    # ctc_k3 ----------------------------------------------------------------------------
    keras.backend.clear_session()
    image = L.Input((12, 5), name="image")
    label = L.Input((None,), dtype="float32", name="label")
    hx = L.Bidirectional(L.GRU(4, return_sequences=True), name="bidirectional")(image)
    y_pred = L.Dense(6, activation="softmax", name="dense")(hx)
    out_t = CTCLayer(name="ctc_loss")(label, y_pred)
    m = keras.Model([image, label], out_t, name="ocr_model")
    set_random(m, 50)
    xi, xl = ctc_inputs()
    save_npy(out, "ctc.input.0.npy", xi)
    save_npy(out, "ctc.input.1.npy", xl)
    y = np.asarray(m.predict([xi, xl], verbose=0))
    yp = np.asarray(keras.Model(image, y_pred).predict(xi, verbose=0))
    np.testing.assert_array_equal(y, yp)
    # the loss is really computed (finite) when the layer is called eagerly
    m([xi, xl])
    assert len(m.losses) == 1 and np.isfinite(float(m.losses[0])), m.losses
    report["ctc eager loss"] = float(m.losses[0])
    save_npy(out, "ctc_k3.expected.npy", y)
    m.save(P("ctc_k3.keras"))
    reload_check(P("ctc_k3.keras"), [xi, xl], [y])
    entry, rows = keras_entry(P("ctc_k3.keras"), "CTCLayer")
    report["ctc_k3.keras config entry"] = entry
    report["ctc_k3.keras model.weights.h5 datasets"] = rows
    print("ctc_k3: predict == y_pred, reload ok")

    with open(os.path.join(out, ".keras3_report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)


# ---------------------------------------------------------------------------------------


def main():
    args = [a for a in sys.argv[1:] if a != "--keras3"]
    out = os.path.abspath(args[0] if args else DEFAULT_OUT)
    if "--keras3" in sys.argv:
        keras3_cases(out)
        return
    os.makedirs(out, exist_ok=True)
    report = tf_keras_cases(out)
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.pop("TF_USE_LEGACY_KERAS", None)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--keras3", out],
                   env=env, check=True)
    rep3 = os.path.join(out, ".keras3_report.json")
    with open(rep3) as f:
        report.update(json.load(f))
    os.remove(rep3)
    for k, v in report.items():
        print(f"{k}: {json.dumps(v, default=str)}")


if __name__ == "__main__":
    main()
