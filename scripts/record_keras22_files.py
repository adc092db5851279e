#!/usr/bin/env python3
"""Writes tests/data/keras22/: HDF5 files laid out the way *standalone* Keras 2.0.8 / 2.1.6 /
2.2.4 wrote them (the files still found in the wild), plus inputs and expected predictions.

Those Keras versions need TensorFlow 1.x and cannot run here, so the files are written
directly with h5py, following the code of those versions (read from the PyPI wheels
Keras-2.2.4 / Keras-2.1.6 / Keras-2.0.8):

  2.2.4  keras/engine/saving.py: _serialize_model (model.save, through
         keras/utils/io_utils.py H5Dict), save_weights_to_hdf5_group,
         save_attributes_to_hdf5_group; keras/engine/network.py: Network.get_config,
         _updated_config, to_json; keras/engine/sequential.py: Sequential.get_config (dict
         with name and layers); keras/engine/base_layer.py and input_layer.py: get_config;
         keras/layers/recurrent.py: RNN/LSTM/GRU/SimpleRNN.get_config;
         keras/layers/wrappers.py: Wrapper/Bidirectional (get_config, weight name scopes);
         keras/layers/core.py: Dense/Masking.get_config; keras/initializers.py;
         keras/optimizers.py: Adam; keras/engine/training.py: _make_train_function.
  2.1.6  keras/models.py: save_model, Sequential.get_config (a bare list of layer
         configs); keras/engine/topology.py: save_weights_to_hdf5_group, Layer.get_config;
         keras/layers/recurrent.py: GRU.get_config (has reset_after);
         keras/layers/embeddings.py: Embedding.get_config.
  2.0.8  as 2.1.6, but keras/layers/recurrent.py: Recurrent/GRU.get_config (no
         reset_after key; implementation=0 right after unroll).

What Keras 2.x wrote and this script reproduces:
  * every string attribute is a FIXED-length byte string (h5py of that time turned the
    `bytes` / `np.asarray([bytes, ...])` Keras gave it into H5T_STRING, NULLPAD, ASCII,
    size = the longest string): keras_version, backend, model_config, training_config
    (scalars) and layer_names / weight_names (1-D arrays). tf-keras writes the same
    attributes as variable-length UTF-8 strings;
  * weight_names of a layer without weights is `np.asarray([])`: float64, shape (0,);
  * datasets at <group>/<layer name>/<weight name>, weight names from TF1 name scopes
    (`lstm_1/kernel:0`, `bidirectional_1/forward_lstm_1/kernel:0`, no `lstm_cell` level);
  * model_config / to_json JSON exactly as json.dumps (default separators) of that
    version's get_config output, keys in the order its code builds them (Python >= 3.6).

Expected predictions come from tf-keras twins (same layer names, LSTM/GRU with
recurrent_activation="hard_sigmoid" = Keras 2's clip(0.2x+0.5, 0, 1), GRU reset_after=False,
every weight set with set_weights to seeded uniform(-0.6, 0.6) float32), cross-checked
against a numpy implementation of the Keras 2 step equations and, where tf-keras can read
the file, against tf-keras loading the written file.

Run: python scripts/record_keras22_files.py [OUT_DIR]
     (needs tensorflow-cpu 2.21, tf-keras 2.21, h5py, numpy)
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "data", "keras22")

BACKEND = "tensorflow"


# ---------------------------------------------------------------------------------------
# HDF5 writing, as Keras 2.x + h5py 2.x did it
# ---------------------------------------------------------------------------------------


def fixed_str(s):
    """`str(x).encode('utf8')` as Keras stored it: a scalar fixed-length string |S<len>."""
    return np.bytes_(s.encode("utf8"))


def fixed_str_list(strings):
    """`[n.encode('utf8') for n in ...]` as stored by h5py: |S<maxlen> array; an empty list
    becomes np.asarray([]) = float64 shape (0,), exactly what Keras 2.x left for layers
    without weights."""
    return np.asarray([s.encode("utf8") for s in strings])


def write_weights_group(g, version, layers):
    """keras 2.x save_weights_to_hdf5_group (2.2.4 engine/saving.py, 2.0.8/2.1.6
    engine/topology.py) and the model_weights part of 2.2.4 _serialize_model: root attrs
    layer_names, backend, keras_version; per layer a group with weight_names and one
    dataset per weight, named by the full TF variable name. `layers` is a list of
    (layer name, [(weight name, array), ...])."""
    g.attrs["layer_names"] = fixed_str_list([name for name, _ in layers])
    g.attrs["backend"] = fixed_str(BACKEND)
    g.attrs["keras_version"] = fixed_str(version)
    for lname, weights in layers:
        lg = g.create_group(lname)
        lg.attrs["weight_names"] = fixed_str_list([n for n, _ in weights])
        for wname, val in weights:
            write_dataset(lg, wname, val)


def write_dataset(g, name, val):
    ds = g.create_dataset(name, val.shape, dtype=val.dtype)  # contiguous, no filters
    if not val.shape:
        ds[()] = val
    else:
        ds[:] = val


def write_whole_model(path, version, model_config_json, layers, training_config_json=None,
                      optimizer_weights=None):
    """model.save: 2.2.4 _serialize_model (attr order keras_version, backend, model_config,
    model_weights, training_config, optimizer_weights); 2.0.8/2.1.6 models.save_model (same
    order)."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = fixed_str(version)
        f.attrs["backend"] = fixed_str(BACKEND)
        f.attrs["model_config"] = fixed_str(model_config_json)
        write_weights_group(f.create_group("model_weights"), version, layers)
        if training_config_json is not None:
            f.attrs["training_config"] = fixed_str(training_config_json)
        if optimizer_weights:
            og = f.create_group("optimizer_weights")
            og.attrs["weight_names"] = fixed_str_list([n for n, _ in optimizer_weights])
            for wname, val in optimizer_weights:
                write_dataset(og, wname, val)


def write_weights_file(path, version, layers):
    """model.save_weights (2.2.4 Network.save_weights -> saving.save_weights_to_hdf5_group)."""
    with h5py.File(path, "w") as f:
        write_weights_group(f, version, layers)


# ---------------------------------------------------------------------------------------
# get_config of Keras 2.2.4 / 2.1.6 / 2.0.8 (key order as the code builds the dicts)
# ---------------------------------------------------------------------------------------

GLOROT_UNIFORM = {"class_name": "VarianceScaling",
                  "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform",
                             "seed": None}}
ORTHOGONAL = {"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}}
ZEROS = {"class_name": "Zeros", "config": {}}
UNIFORM = {"class_name": "RandomUniform", "config": {"minval": -0.05, "maxval": 0.05,
                                                     "seed": None}}


def layer_base(name, batch_input_shape=None):
    """Layer.get_config (2.2.4 base_layer.py, 2.0.8/2.1.6 topology.py): name, trainable,
    and batch_input_shape + dtype only on a layer built with input_shape."""
    c = {"name": name, "trainable": True}
    if batch_input_shape is not None:
        c["batch_input_shape"] = list(batch_input_shape)
        c["dtype"] = "float32"
    return c


def rnn_base_22(name, return_sequences, batch_input_shape=None):
    """RNN.get_config (2.1.6 / 2.2.4) minus the 'cell' entry that LSTM/GRU/SimpleRNN delete."""
    c = layer_base(name, batch_input_shape)
    c.update({"return_sequences": return_sequences, "return_state": False,
              "go_backwards": False, "stateful": False, "unroll": False})
    return c


def lstm_22(name, units, return_sequences, batch_input_shape=None):
    c = rnn_base_22(name, return_sequences, batch_input_shape)
    c.update({"units": units, "activation": "tanh", "recurrent_activation": "hard_sigmoid",
              "use_bias": True, "kernel_initializer": GLOROT_UNIFORM,
              "recurrent_initializer": ORTHOGONAL, "bias_initializer": ZEROS,
              "unit_forget_bias": True, "kernel_regularizer": None,
              "recurrent_regularizer": None, "bias_regularizer": None,
              "activity_regularizer": None, "kernel_constraint": None,
              "recurrent_constraint": None, "bias_constraint": None, "dropout": 0.0,
              "recurrent_dropout": 0.0, "implementation": 1})
    return c


def gru_22(name, units, return_sequences, batch_input_shape=None):
    """GRU.get_config of 2.1.6 and 2.2.4 (identical): ends with implementation, reset_after."""
    c = rnn_base_22(name, return_sequences, batch_input_shape)
    c.update({"units": units, "activation": "tanh", "recurrent_activation": "hard_sigmoid",
              "use_bias": True, "kernel_initializer": GLOROT_UNIFORM,
              "recurrent_initializer": ORTHOGONAL, "bias_initializer": ZEROS,
              "kernel_regularizer": None, "recurrent_regularizer": None,
              "bias_regularizer": None, "activity_regularizer": None,
              "kernel_constraint": None, "recurrent_constraint": None,
              "bias_constraint": None, "dropout": 0.0, "recurrent_dropout": 0.0,
              "implementation": 1, "reset_after": False})
    return c


def gru_208(name, units, return_sequences, batch_input_shape=None):
    """2.0.8 Recurrent.get_config (implementation=0 after unroll) + GRU.get_config (no
    reset_after, no implementation of its own)."""
    c = layer_base(name, batch_input_shape)
    c.update({"return_sequences": return_sequences, "return_state": False,
              "go_backwards": False, "stateful": False, "unroll": False,
              "implementation": 0})
    c.update({"units": units, "activation": "tanh", "recurrent_activation": "hard_sigmoid",
              "use_bias": True, "kernel_initializer": GLOROT_UNIFORM,
              "recurrent_initializer": ORTHOGONAL, "bias_initializer": ZEROS,
              "kernel_regularizer": None, "recurrent_regularizer": None,
              "bias_regularizer": None, "activity_regularizer": None,
              "kernel_constraint": None, "recurrent_constraint": None,
              "bias_constraint": None, "dropout": 0.0, "recurrent_dropout": 0.0})
    return c


def simple_rnn_22(name, units, return_sequences, batch_input_shape=None):
    """SimpleRNN.get_config 2.2.4: no recurrent_activation, no implementation."""
    c = rnn_base_22(name, return_sequences, batch_input_shape)
    c.update({"units": units, "activation": "tanh", "use_bias": True,
              "kernel_initializer": GLOROT_UNIFORM, "recurrent_initializer": ORTHOGONAL,
              "bias_initializer": ZEROS, "kernel_regularizer": None,
              "recurrent_regularizer": None, "bias_regularizer": None,
              "activity_regularizer": None, "kernel_constraint": None,
              "recurrent_constraint": None, "bias_constraint": None, "dropout": 0.0,
              "recurrent_dropout": 0.0})
    return c


def dense(name, units, activation, batch_input_shape=None):
    """Dense.get_config, same keys in 2.0.8, 2.1.6 and 2.2.4."""
    c = layer_base(name, batch_input_shape)
    c.update({"units": units, "activation": activation, "use_bias": True,
              "kernel_initializer": GLOROT_UNIFORM, "bias_initializer": ZEROS,
              "kernel_regularizer": None, "bias_regularizer": None,
              "activity_regularizer": None, "kernel_constraint": None,
              "bias_constraint": None})
    return c


def masking(name, mask_value):
    c = layer_base(name)
    c["mask_value"] = mask_value
    return c


def bidirectional(name, inner, merge_mode):
    """Wrapper.get_config (base + 'layer': the wrapped layer's own config, name lstm_1)
    + Bidirectional 'merge_mode' (2.2.4 wrappers.py)."""
    c = layer_base(name)
    c["layer"] = inner
    c["merge_mode"] = merge_mode
    return c


def embedding(name, input_dim, output_dim, input_length, mask_zero):
    """Embedding.get_config 2.0.8/2.1.6 (2.2.4 identical). Embedding always sets
    input_shape=(input_length,), so batch_input_shape and dtype "float32" are always there."""
    c = layer_base(name, (None, input_length))
    c.update({"input_dim": input_dim, "output_dim": output_dim,
              "embeddings_initializer": UNIFORM, "embeddings_regularizer": None,
              "activity_regularizer": None, "embeddings_constraint": None,
              "mask_zero": mask_zero, "input_length": input_length})
    return c


def input_layer(name, batch_input_shape):
    """InputLayer.get_config 2.2.4 (input_layer.py): batch_input_shape, dtype, sparse, name."""
    return {"batch_input_shape": list(batch_input_shape), "dtype": "float32",
            "sparse": False, "name": name}


def functional_entry(class_name, config, inbound):
    """Network.get_config layer entry: name, class_name, config, inbound_nodes where each
    node is [[inbound layer, node index, tensor index, kwargs]]."""
    nodes = [[[inbound, 0, 0, {}]]] if inbound else []
    return {"name": config["name"], "class_name": class_name, "config": config,
            "inbound_nodes": nodes}


def dumps(obj):
    return json.dumps(obj)  # Keras: json.dumps(..., default=get_json_type), no kwargs


# ---------------------------------------------------------------------------------------
# numpy reference of Keras 2 (standalone) recurrent math, from 2.2.4 recurrent.py cells and
# backend rnn() masking: a masked step leaves the states (and the carried output) unchanged
# ---------------------------------------------------------------------------------------


def hard_sigmoid(x):
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)


def np_lstm(x, mask, k, rk, b, go_backwards=False):
    u = rk.shape[0]
    n, t_len, _ = x.shape
    h = np.zeros((n, u))
    c = np.zeros((n, u))
    outs = [None] * t_len
    steps = range(t_len - 1, -1, -1) if go_backwards else range(t_len)
    for t in steps:
        z = x[:, t] @ k + h @ rk + b
        i, f = hard_sigmoid(z[:, :u]), hard_sigmoid(z[:, u:2 * u])
        cc = f * c + i * np.tanh(z[:, 2 * u:3 * u])
        o = hard_sigmoid(z[:, 3 * u:])
        hh = o * np.tanh(cc)
        m = mask[:, t:t + 1]
        h = np.where(m, hh, h)
        c = np.where(m, cc, c)
        outs[t] = h
    return np.stack(outs, 1), h


def np_gru(x, mask, k, rk, b):
    """reset_after=False (Keras 2 default): hh = tanh(x W_h + (r * h) U_h + b_h)."""
    u = rk.shape[0]
    h = np.zeros((x.shape[0], u))
    for t in range(x.shape[1]):
        xt = x[:, t] @ k + b
        zr = hard_sigmoid(xt[:, :2 * u] + h @ rk[:, :2 * u])
        z, r = zr[:, :u], zr[:, u:]
        hh = np.tanh(xt[:, 2 * u:] + (r * h) @ rk[:, 2 * u:])
        hn = z * h + (1 - z) * hh
        h = np.where(mask[:, t:t + 1], hn, h)
    return h


def np_simple_rnn(x, mask, k, rk, b):
    h = np.zeros((x.shape[0], rk.shape[0]))
    for t in range(x.shape[1]):
        hn = np.tanh(x[:, t] @ k + h @ rk + b)
        h = np.where(mask[:, t:t + 1], hn, h)
    return h


def softmax(v):
    e = np.exp(v - v.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------


def set_random(model, seed):
    """Every weight of every layer (Bidirectional: both directions) := seeded U(-0.6, 0.6)."""
    for i, layer in enumerate(model.layers):
        ws = layer.get_weights()
        if ws:
            rs = np.random.RandomState(seed * 100 + i)
            layer.set_weights([rs.uniform(-0.6, 0.6, w.shape).astype("float32") for w in ws])


def save_npy(out, name, arr, dtype="float32"):
    np.save(os.path.join(out, name), np.asarray(arr, dtype=dtype))


def hdf5_type_desc(tid):
    from h5py import h5t
    cls = tid.get_class()
    if cls == h5t.STRING:
        if tid.is_variable_str():
            return "H5T_STRING variable-length"
        pad = {h5t.STR_NULLPAD: "NULLPAD", h5t.STR_NULLTERM: "NULLTERM",
               h5t.STR_SPACEPAD: "SPACEPAD"}[tid.get_strpad()]
        cset = {h5t.CSET_ASCII: "ASCII", h5t.CSET_UTF8: "UTF8"}[tid.get_cset()]
        return f"H5T_STRING fixed size={tid.get_size()} {pad} {cset}"
    if cls == h5t.FLOAT:
        return f"H5T_FLOAT size={tid.get_size()}"
    if cls == h5t.INTEGER:
        return f"H5T_INTEGER size={tid.get_size()}"
    return f"class {cls}"


def describe_h5(path):
    """Prints every attribute (numpy dtype, shape, HDF5 type) and dataset of a file and
    asserts that no string attribute is variable-length."""
    lines = [f"== {os.path.basename(path)} ({os.path.getsize(path)} bytes)"]
    with h5py.File(path, "r") as f:
        def show(name, obj):
            for k in obj.attrs:
                v = obj.attrs[k]
                aid = obj.attrs.get_id(k)
                desc = hdf5_type_desc(aid.get_type())
                assert "variable" not in desc, (path, name, k)
                shape = getattr(v, "shape", None)
                val = v if not isinstance(v, (bytes, np.bytes_)) or len(v) < 70 else \
                    v[:67] + b"..."
                lines.append(f"  attr /{name}:{k}  numpy {getattr(v, 'dtype', type(v))} "
                             f"shape {shape}  {desc}  = {val!r}")
            if isinstance(obj, h5py.Dataset):
                lines.append(f"  dataset /{name}  {obj.dtype} {obj.shape}")
        show("", f)
        f.visititems(show)
    print("\n".join(lines))


def read_layer_weights(path, group=None):
    with h5py.File(path, "r") as f:
        g = f[group] if group else f
        out = {}
        for lname in g.attrs["layer_names"]:
            lname = lname.decode("utf8")
            out[lname] = [np.asarray(g[lname][n.decode("utf8")])
                          for n in g[lname].attrs["weight_names"]]
        return out


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT)
    os.makedirs(out, exist_ok=True)
    P = lambda n: os.path.join(out, n)  # noqa: E731

    import tensorflow as tf
    import tf_keras
    from tf_keras import layers as L

    tf.random.set_seed(0)
    np.random.seed(0)
    report = {}

    def predict(model, x):
        return model(x, training=False).numpy().astype("float32")

    def try_tf_keras(label, fn, expected):
        try:
            y = fn()
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {str(e)[:600]}"
            print(f"{label}: tf-keras could NOT load it: {msg}")
            report[label] = f"failed: {msg}"
            return
        diff = float(np.abs(y - expected).max())
        print(f"{label}: tf-keras loaded it, max |pred - expected| = {diff:.3g}")
        assert diff <= 1e-6, diff
        report[label] = f"ok, max abs diff {diff:.3g}"

    # a. k224_sequential_whole ----------------------------------------------------------
    tm = tf_keras.Sequential([
        L.LSTM(6, return_sequences=True, recurrent_activation="hard_sigmoid",
               input_shape=(5, 3), name="lstm_1"),
        L.GRU(4, recurrent_activation="hard_sigmoid", reset_after=False, name="gru_1"),
        L.Dense(2, activation="softmax", name="dense_1"),
    ])
    set_random(tm, 1)
    x = np.random.RandomState(11).uniform(-1, 1, (2, 5, 3)).astype("float32")
    y = predict(tm, x)
    lw, gw, dw = (l.get_weights() for l in tm.layers)
    ones = np.ones(x.shape[:2], bool)
    seq, _ = np_lstm(x.astype("float64"), ones, *lw)
    ref = softmax(np_gru(seq, ones, *gw) @ dw[0] + dw[1])
    print(f"a: max |numpy Keras-2 reference - tf-keras twin| = {np.abs(ref - y).max():.3g}")
    assert np.abs(ref - y).max() < 1e-5
    save_npy(out, "k224_sequential_whole.input.npy", x)
    save_npy(out, "k224_sequential_whole.expected.npy", y)

    config_a = {"class_name": "Sequential", "config": {"name": "sequential_1", "layers": [
        {"class_name": "LSTM", "config": lstm_22("lstm_1", 6, True, (None, 5, 3))},
        {"class_name": "GRU", "config": gru_22("gru_1", 4, False)},
        {"class_name": "Dense", "config": dense("dense_1", 2, "softmax")},
    ]}}
    # model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    # then fit: 2.2.4 Adam.get_config stores float(K.get_value(float32 variable)), epsilon
    # K.epsilon(); the optimizer state is [Adam/iterations] + ms + vs + vhats, the last three
    # made by K.zeros inside name scopes training/Adam (tf.Variable default name Variable).
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    training_a = {"optimizer_config": {"class_name": "Adam", "config": {
        "lr": f32(0.001), "beta_1": f32(0.9), "beta_2": f32(0.999), "decay": 0.0,
        "epsilon": 1e-07, "amsgrad": False}},
        "loss": "categorical_crossentropy", "metrics": ["accuracy"],
        "sample_weight_mode": None, "loss_weights": None}
    names = {"lstm_1": ["kernel", "recurrent_kernel", "bias"],
             "gru_1": ["kernel", "recurrent_kernel", "bias"],
             "dense_1": ["kernel", "bias"]}
    layers_a = [(l.name, [(f"{l.name}/{n}:0", w) for n, w in zip(names[l.name], l.get_weights())])
                for l in tm.layers]
    params = [w for _, ws in layers_a for _, w in ws]
    rs = np.random.RandomState(12)
    ms = [rs.uniform(-0.01, 0.01, p.shape).astype("float32") for p in params]
    vs = [rs.uniform(0, 1e-4, p.shape).astype("float32") for p in params]
    vhats = [np.zeros((1,), "float32") for _ in params]
    opt = [("Adam/iterations:0", np.array(10, dtype="int64"))]
    for i, v in enumerate(ms + vs + vhats):
        opt.append((f"training/Adam/Variable{'' if i == 0 else '_' + str(i)}:0", v))
    mc_a = dumps(config_a)
    write_whole_model(P("k224_sequential_whole.h5"), "2.2.4", mc_a, layers_a,
                      dumps(training_a), opt)
    report["k224_sequential_whole.h5 model_config"] = mc_a
    report["k224_sequential_whole.h5 training_config"] = dumps(training_a)

    # b. k224_functional ----------------------------------------------------------------
    inp = L.Input((None, 4), name="input_1")
    m = L.Masking(0.0, name="masking_1")(inp)
    bi = L.Bidirectional(L.LSTM(3, return_sequences=True, recurrent_activation="hard_sigmoid",
                                name="lstm_1"), merge_mode="concat", name="bidirectional_1")(m)
    s = L.SimpleRNN(5, name="simple_rnn_1")(bi)
    o = L.Dense(1, name="dense_1")(s)
    tb = tf_keras.Model(inp, o, name="model_1")
    set_random(tb, 2)
    x = np.random.RandomState(21).uniform(-1, 1, (2, 6, 4)).astype("float32")
    x[1, 4:, :] = 0.0
    y = predict(tb, x)
    bw = tb.get_layer("bidirectional_1").get_weights()
    sw = tb.get_layer("simple_rnn_1").get_weights()
    dw = tb.get_layer("dense_1").get_weights()
    mask = np.any(x != 0.0, axis=-1)
    xf = x.astype("float64")
    fwd, _ = np_lstm(xf, mask, *bw[:3])
    bwd, _ = np_lstm(xf, mask, *bw[3:], go_backwards=True)
    ref = np_simple_rnn(np.concatenate([fwd, bwd], -1), mask, *sw) @ dw[0] + dw[1]
    print(f"b: max |numpy Keras-2 reference - tf-keras twin| = {np.abs(ref - y).max():.3g}")
    assert np.abs(ref - y).max() < 1e-5
    ones = np.ones_like(mask)
    unmasked = np_simple_rnn(np.concatenate([np_lstm(xf, ones, *bw[:3])[0],
                                             np_lstm(xf, ones, *bw[3:], go_backwards=True)[0]],
                                            -1), ones, *sw) @ dw[0] + dw[1]
    assert abs(unmasked[1, 0] - y[1, 0]) > 1e-3, "the mask does not change row 1"
    save_npy(out, "k224_functional.input.npy", x)
    save_npy(out, "k224_functional.expected.npy", y)

    config_b = {"name": "model_1", "layers": [
        functional_entry("InputLayer", input_layer("input_1", (None, None, 4)), None),
        functional_entry("Masking", masking("masking_1", 0.0), "input_1"),
        functional_entry("Bidirectional", bidirectional(
            "bidirectional_1", {"class_name": "LSTM", "config": lstm_22("lstm_1", 3, True)},
            "concat"), "masking_1"),
        functional_entry("SimpleRNN", simple_rnn_22("simple_rnn_1", 5, False),
                         "bidirectional_1"),
        functional_entry("Dense", dense("dense_1", 1, "linear"), "simple_rnn_1"),
    ], "input_layers": [["input_1", 0, 0]], "output_layers": [["dense_1", 0, 0]]}
    json_b = dumps({"class_name": "Model", "config": config_b, "keras_version": "2.2.4",
                    "backend": BACKEND})
    with open(P("k224_functional.json"), "w") as f:
        f.write(json_b)
    lstm_names = ["kernel", "recurrent_kernel", "bias"]
    layers_b = [
        ("input_1", []),
        ("masking_1", []),
        ("bidirectional_1",
         [(f"bidirectional_1/forward_lstm_1/{n}:0", w) for n, w in zip(lstm_names, bw[:3])] +
         [(f"bidirectional_1/backward_lstm_1/{n}:0", w) for n, w in zip(lstm_names, bw[3:])]),
        ("simple_rnn_1", [(f"simple_rnn_1/{n}:0", w) for n, w in zip(lstm_names, sw)]),
        ("dense_1", [(f"dense_1/{n}:0", w) for n, w in zip(["kernel", "bias"], dw)]),
    ]
    write_weights_file(P("k224_functional_weights.h5"), "2.2.4", layers_b)
    report["k224_functional.json"] = json_b

    # c. k216 / k208 sequential, bare-list config ---------------------------------------
    tc = tf_keras.Sequential([
        L.Embedding(20, 4, input_length=6, mask_zero=True, name="embedding_1"),
        L.GRU(5, recurrent_activation="hard_sigmoid", reset_after=False, name="gru_1"),
        L.Dense(3, name="dense_1"),
    ])
    tc.build((None, 6))
    set_random(tc, 3)
    tok = np.random.RandomState(31).randint(1, 20, (2, 6)).astype("int32")
    tok[0, 4:] = 0
    y = predict(tc, tok)
    ew, gw, dw = (l.get_weights() for l in tc.layers)
    ref = np_gru(ew[0][tok].astype("float64"), tok != 0, *gw) @ dw[0] + dw[1]
    print(f"c: max |numpy Keras-2 reference - tf-keras twin| = {np.abs(ref - y).max():.3g}")
    assert np.abs(ref - y).max() < 1e-5
    unmasked = np_gru(ew[0][tok].astype("float64"), np.ones(tok.shape, bool), *gw) @ dw[0] + dw[1]
    assert np.abs(unmasked[0] - y[0]).max() > 1e-3, "the mask does not change row 0"
    layers_c = [
        ("embedding_1", [("embedding_1/embeddings:0", ew[0])]),
        ("gru_1", [(f"gru_1/{n}:0", w) for n, w in zip(lstm_names, gw)]),
        ("dense_1", [(f"dense_1/{n}:0", w) for n, w in zip(["kernel", "bias"], dw)]),
    ]
    for version, gru_cfg in (("2.1.6", gru_22), ("2.0.8", gru_208)):
        stem = "k" + version.replace(".", "") + "_sequential_list"
        config_c = {"class_name": "Sequential", "config": [
            {"class_name": "Embedding", "config": embedding("embedding_1", 20, 4, 6, True)},
            {"class_name": "GRU", "config": gru_cfg("gru_1", 5, False)},
            {"class_name": "Dense", "config": dense("dense_1", 3, "linear")},
        ]}
        mc = dumps(config_c)
        # saved uncompiled: 2.0.8/2.1.6 save_model writes training_config only when the
        # model has an `optimizer` attribute, which Sequential gets at compile().
        write_whole_model(P(f"{stem}.h5"), version, mc, layers_c)
        save_npy(out, f"{stem}.input.npy", tok, dtype="int32")
        save_npy(out, f"{stem}.expected.npy", y)
        report[f"{stem}.h5 model_config"] = mc

    # checks: attribute types, weights read back == twin weights ------------------------
    for name in ["k224_sequential_whole.h5", "k224_functional_weights.h5",
                 "k216_sequential_list.h5", "k208_sequential_list.h5"]:
        describe_h5(P(name))
    for path, group, twin in [("k224_sequential_whole.h5", "model_weights", tm),
                              ("k224_functional_weights.h5", None, tb),
                              ("k216_sequential_list.h5", "model_weights", tc),
                              ("k208_sequential_list.h5", "model_weights", tc)]:
        back = read_layer_weights(P(path), group)
        for layer in twin.layers:
            got = back.get(layer.name, [])
            want = layer.get_weights()
            assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in
                                                 zip(got, want)), (path, layer.name)
    for path in ["k224_sequential_whole.h5", "k216_sequential_list.h5",
                 "k208_sequential_list.h5"]:
        with h5py.File(P(path), "r") as f:
            json.loads(f.attrs["model_config"].decode("utf8"))

    # tf-keras loading the written files ------------------------------------------------
    xa = np.load(P("k224_sequential_whole.input.npy"))
    ya = np.load(P("k224_sequential_whole.expected.npy"))
    try_tf_keras("k224_sequential_whole.h5 load_model(compile=False)",
                 lambda: predict(tf_keras.models.load_model(P("k224_sequential_whole.h5"),
                                                            compile=False), xa), ya)
    try_tf_keras("k224_sequential_whole.h5 load_model(compile=True)",
                 lambda: predict(tf_keras.models.load_model(P("k224_sequential_whole.h5")),
                                 xa), ya)

    def load_b():
        with open(P("k224_functional.json")) as f:
            mb = tf_keras.models.model_from_json(f.read())
        mb.load_weights(P("k224_functional_weights.h5"))
        return predict(mb, np.load(P("k224_functional.input.npy")))

    try_tf_keras("k224_functional.json + k224_functional_weights.h5", load_b,
                 np.load(P("k224_functional.expected.npy")))

    def load_b_by_name():
        with open(P("k224_functional.json")) as f:
            mb = tf_keras.models.model_from_json(f.read())
        mb.load_weights(P("k224_functional_weights.h5"), by_name=True)
        return predict(mb, np.load(P("k224_functional.input.npy")))

    try_tf_keras("k224_functional_weights.h5 load_weights(by_name=True)", load_b_by_name,
                 np.load(P("k224_functional.expected.npy")))
    for stem in ["k216_sequential_list", "k208_sequential_list"]:
        try_tf_keras(f"{stem}.h5 load_model(compile=False)",
                     lambda stem=stem: predict(tf_keras.models.load_model(
                         P(f"{stem}.h5"), compile=False), np.load(P(f"{stem}.input.npy"))),
                     np.load(P(f"{stem}.expected.npy")))

    # tf-keras reads a GRU config without reset_after as reset_after=True (its default);
    # Keras 2.0.8 had only the reset_after=False form. With that one key added, tf-keras
    # loads the 2.0.8 file's weights (by layer order) to the expected prediction.
    def load_208_patched():
        with h5py.File(P("k208_sequential_list.h5"), "r") as f:
            cfg = json.loads(f.attrs["model_config"].decode("utf8"))
        cfg["config"][1]["config"]["reset_after"] = False
        mm = tf_keras.models.model_from_json(json.dumps(cfg))
        mm.load_weights(P("k208_sequential_list.h5"))
        return predict(mm, np.load(P("k208_sequential_list.input.npy")))

    try_tf_keras("k208_sequential_list.h5 with reset_after=false added to its GRU config",
                 load_208_patched, np.load(P("k208_sequential_list.expected.npy")))

    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
