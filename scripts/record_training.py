#!/usr/bin/env python3
"""Writes tests/data/training/: gradients and training runs recorded from Keras 3.15.1
(TensorFlow backend, CPU) for the crate's training path.

1. Recurrent layer cases (NAME.npz + NAME.json): one LSTM, GRU (both forms) or SimpleRNN
   layer called on x with a timestep mask
   and initial states (some cases without), in float64 and float32. The npz holds the
   weights (kernel, recurrent_kernel[, bias]), x, mask (0/1), h0, c0, the cotangents of
   each output (dy, and dh/dc with return_state), Keras's outputs, and the gradients from
   tf.GradientTape of sum(outputs * cotangents) w.r.t. every weight, x, h0 and c0.
2. Model cases (NAME.keras + NAME.npz + NAME.json): a Sequential model, inputs x, targets
   y, the initial weights (w0, w1, ...); `grads` cases hold the loss (as Keras's loss object computes it, masks included) and
   its gradients w.r.t. every trainable weight and x; `fit` cases hold the weights after
   `model.fit(x, y, batch_size, epochs, shuffle=False)` and the per-epoch losses.

Weights are seeded uniform(-0.5, 0.5).
Run: KERAS_BACKEND=tensorflow python scripts/record_training.py [OUT_DIR]
"""
import json
import math
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
import keras
from keras import layers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "training")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(41)


def randomize(model):
    for layer in model._flatten_layers(include_self=False):
        if layer.weights and not layer._layers:
            # (a variance stays positive)
            layer.set_weights([
                rng.uniform(0.5, 1.5, v.shape).astype(v.dtype) if "variance" in v.name
                else rng.uniform(-0.5, 0.5, v.shape).astype(v.dtype) for v in layer.weights])


def mask_of(b, t, pattern):
    m = np.ones((b, t), dtype=bool)
    if pattern == "tail":
        m[0, t - 2:] = False
        m[-1, t // 2:] = False
    elif pattern == "holes":
        m[0, 0] = False
        m[1 % b, 2] = False
        m[-1, 1:3] = False
    elif pattern == "row":
        m[0, :] = False
    return m


# 1. LSTM layer cases.
LAYER_CASES = [
    # name, dtype, layer kwargs, mask pattern, initial states, (b, t, i)
    ("seq_f64", "float64", dict(units=4, return_sequences=True), "holes", True, (3, 6, 3)),
    ("seq_f32", "float32", dict(units=4, return_sequences=True), "holes", True, (3, 6, 3)),
    ("last_backwards_f64", "float64", dict(units=5, go_backwards=True), "tail", False, (3, 7, 2)),
    ("states_f64", "float64", dict(units=3, return_sequences=True, return_state=True,
                                   activation="relu", recurrent_activation="hard_sigmoid",
                                   use_bias=False), "row", True, (2, 5, 4)),
    ("zero_output_f64", "float64", dict(units=4, return_sequences=True,
                                        zero_output_for_mask=True, go_backwards=True),
     "tail", True, (3, 6, 2)),
    ("long_f64", "float64", dict(units=6, return_sequences=True), "none", False, (2, 300, 3)),
    ("gru_f64", "float64", dict(cls="GRU", units=4, return_sequences=True), "holes", True,
     (3, 6, 3)),
    ("gru_v1_f64", "float64", dict(cls="GRU", units=3, reset_after=False, return_state=True,
                                   go_backwards=True), "tail", True, (3, 6, 2)),
    ("gru_v1_seq_f64", "float64", dict(cls="GRU", units=4, reset_after=False,
                                       return_sequences=True, activation="relu"),
     "row", False, (2, 5, 3)),
    ("gru_f32", "float32", dict(cls="GRU", units=5), "tail", False, (3, 7, 2)),
    ("rnn_f64", "float64", dict(cls="SimpleRNN", units=4, return_sequences=True,
                                return_state=True, go_backwards=True), "holes", True, (3, 6, 3)),
    ("rnn_long_f64", "float64", dict(cls="SimpleRNN", units=5, activation="relu",
                                     zero_output_for_mask=True, return_sequences=True),
     "tail", False, (2, 400, 2)),
]
for name, dtype, kw, pattern, with_states, (b, t, i) in LAYER_CASES:
    kw = dict(kw)
    cls = kw.pop("cls", "LSTM")
    lstm = cls == "LSTM"
    layer = getattr(layers, cls)(dtype=dtype, **kw)
    x = rng.uniform(-1, 1, (b, t, i)).astype(dtype)
    h0 = rng.uniform(-1, 1, (b, kw["units"])).astype(dtype)
    c0 = rng.uniform(-1, 1, (b, kw["units"])).astype(dtype)
    mask = mask_of(b, t, pattern)
    layer(x[:1], initial_state=[h0[:1], c0[:1]] if lstm else [h0[:1]])  # builds
    layer.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype(dtype) for w in layer.weights])
    xv, h0v, c0v = tf.Variable(x), tf.Variable(h0), tf.Variable(c0)
    with tf.GradientTape() as tape:
        kwargs = dict(mask=tf.constant(mask)) if pattern != "none" else {}
        if with_states:
            kwargs["initial_state"] = [h0v, c0v] if lstm else [h0v]
        outs = layer(xv, **kwargs)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        cots = [rng.uniform(-1, 1, o.shape).astype(dtype) for o in outs]
        total = sum(tf.reduce_sum(o * c) for o, c in zip(outs, cots))
    watched = list(layer.trainable_weights) + [xv, h0v, c0v]
    grads = tape.gradient(total, watched, unconnected_gradients="zero")
    arrays = {f"w{k}": w.numpy() for k, w in enumerate(layer.weights)}
    arrays.update(x=x, mask=mask.astype(dtype), h0=h0, c0=c0)
    for k, (o, c) in enumerate(zip(outs, cots)):
        arrays[f"out{k}"] = np.asarray(o)
        arrays[f"cot{k}"] = c
    for k, g in enumerate(grads[:len(layer.trainable_weights)]):
        arrays[f"grad_w{k}"] = np.asarray(g)
    arrays["grad_x"], arrays["grad_h0"], arrays["grad_c0"] = (np.asarray(g) for g in grads[-3:])
    np.savez(os.path.join(OUT, f"{name}.npz"), **arrays)
    cfg = layer.get_config()
    cfg = {k: v for k, v in cfg.items() if isinstance(v, (bool, int, float, str))}
    meta = dict(config=cfg, cls=cls, masked=pattern != "none", initial_state=with_states,
                dtype=dtype)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(name, [o.shape for o in outs])


# 2. Model cases.
def loss_object(name, dtype):
    # (in the model's dtype: a loss object casts its inputs to its own)
    return {
        "mse": keras.losses.MeanSquaredError,
        "mae": keras.losses.MeanAbsoluteError,
        "binary_crossentropy": keras.losses.BinaryCrossentropy,
        "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
        "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    }[name](dtype=dtype)


def optimizer(spec):
    kind, kw = spec
    return {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam,
            "adamw": keras.optimizers.AdamW, "rmsprop": keras.optimizers.RMSprop}[kind](**kw)


def build(kind, dtype, t, i):
    # (the layers take the global dtype policy, not floatx alone)
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    if kind == "lstm_dense":
        m = keras.Sequential([keras.Input((t, i)), layers.LSTM(6), layers.Dense(3)])
    elif kind == "masked_seq":
        m = keras.Sequential([keras.Input((t, i)), layers.Masking(0.0),
                              layers.LSTM(5, return_sequences=True),
                              layers.Dense(2, activation="tanh")])
    elif kind == "stack_softmax":
        m = keras.Sequential([keras.Input((t, i)), layers.LSTM(8, return_sequences=True),
                              layers.LSTM(4, recurrent_activation="hard_sigmoid"),
                              layers.Dense(5, activation="softmax")])
    elif kind == "sigmoid":
        m = keras.Sequential([keras.Input((t, i)), layers.LSTM(4, go_backwards=True),
                              layers.Dense(1, activation="sigmoid")])
    elif kind == "gru_rnn":
        m = keras.Sequential([keras.Input((t, i)), layers.Masking(0.0),
                              layers.GRU(5, return_sequences=True),
                              layers.SimpleRNN(3, go_backwards=True), layers.Dense(3)])
    elif kind == "bidi":
        m = keras.Sequential([keras.Input((t, i)), layers.Masking(0.0),
                              layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
                              layers.Bidirectional(layers.GRU(3), merge_mode="sum"),
                              layers.Dense(3)])
    elif kind == "bidi_mul":
        m = keras.Sequential([keras.Input((t, i)),
                              layers.Bidirectional(layers.SimpleRNN(3, return_sequences=True),
                                                   merge_mode="mul"),
                              layers.Bidirectional(layers.LSTM(2),
                                                   merge_mode="ave"),
                              layers.Dense(3)])
    elif kind == "hard_sigmoid_out":
        m = keras.Sequential([keras.Input((t, i)), layers.LSTM(4),
                              layers.Dense(2, activation="hard_sigmoid")])
    elif kind in ("softplus_out", "softmax_out"):
        act = "softplus" if kind == "softplus_out" else "softmax"
        m = keras.Sequential([keras.Input((t, i)), layers.LSTM(4),
                              layers.Dense(5, activation=act)])
    elif kind == "dropout_td":
        m = keras.Sequential([keras.Input((t, i)), layers.Dropout(0.2),
                              layers.LSTM(5, return_sequences=True),
                              layers.Dropout(0.4, noise_shape=(None, 1, 5)),
                              layers.TimeDistributed(layers.Dense(2))])
    elif kind == "embedding":
        m = keras.Sequential([keras.Input((t,), dtype="int32"),
                              layers.Embedding(12, 4, mask_zero=True),
                              layers.LSTM(5), layers.Dense(3, activation="softmax")])
    elif kind == "rec_dropout":
        m = keras.Sequential([keras.Input((t, i)), layers.Masking(0.0),
                              layers.LSTM(5, dropout=0.3, recurrent_dropout=0.2,
                                          return_sequences=True),
                              layers.Dropout(0.3),
                              layers.Bidirectional(layers.GRU(3, reset_after=False,
                                                              recurrent_dropout=0.4,
                                                              return_sequences=True)),
                              layers.SimpleRNN(4, dropout=0.2, recurrent_dropout=0.3,
                                               go_backwards=True),
                              layers.Dense(3)])
    elif kind == "rec_dropout_gpu":
        # (layers the GPU trainer takes: GRU reset_after)
        m = keras.Sequential([keras.Input((t, i)),
                              layers.LSTM(6, recurrent_dropout=0.25, return_sequences=True),
                              layers.Bidirectional(layers.GRU(3, dropout=0.2,
                                                              recurrent_dropout=0.3,
                                                              return_sequences=True)),
                              layers.GRU(4, dropout=0.3, return_sequences=True),
                              layers.SimpleRNN(3, recurrent_dropout=0.5,
                                               return_sequences=True),
                              layers.Dense(2)])
    elif kind == "pool_norm":
        m = keras.Sequential([keras.Input((t, i)),
                              layers.Conv1D(6, 3, padding="causal", dilation_rate=2,
                                            activation="relu"),
                              layers.MaxPooling1D(2),
                              layers.LSTM(8, return_sequences=True),
                              layers.LayerNormalization(),
                              layers.GlobalMaxPooling1D(), layers.Dense(2)])
    elif kind == "conv_same":
        m = keras.Sequential([keras.Input((t, i)),
                              layers.Conv1D(4, 3, strides=2, padding="same",
                                            activation="tanh"),
                              layers.AveragePooling1D(2, strides=1, padding="same"),
                              layers.Conv1D(5, 2, use_bias=False),
                              layers.GRU(5, return_sequences=True),
                              layers.LayerNormalization(center=False, epsilon=0.01),
                              layers.GlobalAveragePooling1D(), layers.Dense(3)])
    elif kind == "embed_pool":
        m = keras.Sequential([keras.Input((t,), dtype="int32"),
                              layers.Embedding(12, 4, mask_zero=True),
                              layers.LSTM(6, return_sequences=True),
                              layers.SpatialDropout1D(0.3),
                              layers.LayerNormalization(scale=False),
                              layers.GlobalAveragePooling1D(),
                              layers.Dense(3, activation="softmax")])
    elif kind == "repeat_flatten":
        m = keras.Sequential([keras.Input((t, i)), layers.SimpleRNN(6),
                              layers.RepeatVector(3),
                              layers.LSTM(4, return_sequences=True),
                              layers.Flatten(), layers.Dense(5),
                              layers.Activation("softmax")])
    elif kind == "batch_norm":
        m = keras.Sequential([keras.Input((t, i)), layers.Masking(0.0),
                              layers.BatchNormalization(momentum=0.9),
                              layers.LSTM(5, return_sequences=True),
                              layers.BatchNormalization(center=False, epsilon=0.01),
                              layers.GlobalAveragePooling1D(),
                              layers.BatchNormalization(scale=False, momentum=0.8),
                              layers.Dense(3)])
    elif kind == "noise":
        m = keras.Sequential([keras.Input((t, i)), layers.Masking(0.0),
                              layers.GaussianNoise(0.3),
                              layers.LSTM(5, return_sequences=True),
                              layers.GaussianDropout(0.25),
                              layers.AlphaDropout(0.2),
                              layers.Dense(2)])
    elif kind == "reshape_permute":
        m = keras.Sequential([keras.Input((t, i)), layers.Permute((2, 1)),
                              layers.LSTM(5, return_sequences=True),
                              layers.Reshape((-1, 10)), layers.GRU(3), layers.Dense(3)])
    elif kind == "rnn_dropout":
        m = keras.Sequential([keras.Input((t, i)),
                              layers.LSTM(5, dropout=0.3, return_sequences=True),
                              layers.Bidirectional(layers.GRU(3, dropout=0.25)),
                              layers.Dense(3)])
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    return m


def data(kind, dtype, n, t, i):
    if kind in ("embedding", "embed_pool"):
        # token ids in [1, 12) with padded (0) tails of 0, 1, 2 steps, as floats (the
        # crate's input type); Keras gets them as int32
        x = rng.randint(1, 12, (n, t)).astype(dtype)
        for r in range(n):
            x[r, t - (r % 3):] = 0
        return x, rng.randint(0, 3, (n,)).astype(dtype)
    x = rng.uniform(-1, 1, (n, t, i)).astype(dtype)
    if kind in ("masked_seq", "gru_rnn", "bidi", "rec_dropout", "batch_norm", "noise"):
        for r in range(n):
            x[r, t - (r % 3):] = 0.0  # padded tails of 0, 1, 2 steps
    if kind in ("masked_seq", "dropout_td", "rec_dropout_gpu", "noise"):
        y = rng.uniform(-1, 1, (n, t, 2)).astype(dtype)
    elif kind == "stack_softmax":
        y = rng.randint(0, 5, (n,)).astype(dtype)
    elif kind == "sigmoid":
        y = rng.randint(0, 2, (n, 1)).astype(dtype)
    elif kind == "hard_sigmoid_out":
        y = rng.randint(0, 2, (n, 2)).astype(dtype)
    elif kind in ("softplus_out", "softmax_out", "repeat_flatten"):
        y = np.eye(5, dtype=dtype)[rng.randint(0, 5, (n,))]
    elif kind == "pool_norm":
        y = rng.uniform(-1, 1, (n, 2)).astype(dtype)
    else:
        y = rng.uniform(-1, 1, (n, 3)).astype(dtype)
    return x, y


# The crate's dropout masks in training mode (src/train/dropout.rs), drawn here the same way
# and given to Keras's layers in place of TensorFlow's, so that a tape over
# model(x, training=True) holds the gradients the crate's gradients_in_training(seed) gives.
from keras_recording import M64, SplitMix, layer_stream, scale_mask


def direction_stream(seed, at, d):
    return SplitMix(seed ^ ((at * 0xD1B54A32D192ED03) & M64)
                    ^ (((d + 1) * 0x8CB92BA72F3D8DD7) & M64))


RECURRENT_STREAM = 0xA0761D6478BD642F


def normal_noise(mean, stddev, shape, rng, dtype):
    """The crate's GaussianNoise/GaussianDropout draws: Box-Muller over SplitMix64 (1 - u
    for the logarithm), row-major."""
    out = np.empty(int(np.prod(shape)))
    for k in range(out.size):
        u1 = 1.0 - rng.next_f64()
        u2 = rng.next_f64()
        out[k] = mean + stddev * (math.sqrt(-2.0 * math.log(u1)) * math.cos(math.tau * u2))
    return out.reshape(shape).astype(dtype)


def inject_masks(model, seed, b, dtype):
    """Gives every Dropout layer and recurrent cell of `model` the crate's masks for `seed`
    (batch of `b` rows); `at` is the layer's index in model.layers, as in the crate's chain."""
    for at, layer in enumerate(model.layers):
        # (the shape of what the layer reads: the previous layer's output)
        in_shape = (model.inputs[0] if at == 0 else model.layers[at - 1].output).shape
        if isinstance(layer, (layers.GaussianNoise, layers.GaussianDropout)):
            shape = [b] + list(in_shape[1:])
            rng = layer_stream(seed, at)
            if isinstance(layer, layers.GaussianNoise):
                n = tf.constant(normal_noise(0.0, layer.stddev, shape, rng, dtype))
                layer.call = lambda inputs, training=False, n=n: inputs + n if training else inputs
            else:
                sd = math.sqrt(layer.rate / (1.0 - layer.rate))
                n = tf.constant(normal_noise(1.0, sd, shape, rng, dtype))
                layer.call = lambda inputs, training=False, n=n: inputs * n if training else inputs
            continue
        if isinstance(layer, layers.AlphaDropout):
            shape = [b] + list(in_shape[1:])
            kept = (scale_mask(layer.rate, shape, layer_stream(seed, at), "float64") != 0)
            kept = tf.constant(kept.astype(dtype))
            r = layer.rate
            alpha_p = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
            a = ((1 - r) * (1 + r * alpha_p**2)) ** -0.5
            bb = -a * alpha_p * r
            layer.call = (lambda inputs, training=False, k=kept, a=a, bb=bb, ap=alpha_p:
                          a * (inputs * k + ap * (1 - k)) + bb if training else inputs)
            continue
        if isinstance(layer, layers.Dropout) and layer.rate > 0:
            shape = [b] + list(in_shape[1:])
            if isinstance(layer, layers.SpatialDropout1D):
                shape = [b, 1, shape[2]]
            elif layer.noise_shape is not None:
                shape = [s if n is None else n for s, n in zip(shape, layer.noise_shape)]
            m = tf.constant(scale_mask(layer.rate, shape, layer_stream(seed, at), dtype))
            layer.call = lambda inputs, training=False, m=m: inputs * m if training else inputs
            continue
        cells = []
        if isinstance(layer, layers.Bidirectional):
            cells = [layer.forward_layer.cell, layer.backward_layer.cell]
        elif isinstance(layer, (layers.LSTM, layers.GRU, layers.SimpleRNN)):
            cells = [layer.cell]
        for d, cell in enumerate(cells):
            gates = {"LSTMCell": 4, "GRUCell": 3}.get(type(cell).__name__, 1)
            i, h = in_shape[-1], cell.units
            if cell.recurrent_dropout > 0:
                ins = None
                if cell.dropout > 0:
                    rng = direction_stream(seed, at, d)
                    ins = [tf.constant(scale_mask(cell.dropout, (b, i), rng, dtype))
                           for _ in range(gates)]
                rng = direction_stream(seed ^ RECURRENT_STREAM, at, d)
                recs = [tf.constant(scale_mask(cell.recurrent_dropout, (b, h), rng, dtype))
                        for _ in range(gates)]
                if gates == 1:
                    ins, recs = ins and ins[0], recs[0]
            elif cell.dropout > 0:
                m = scale_mask(cell.dropout, (b, 1, i), direction_stream(seed, at, d), dtype)
                ins, recs = tf.constant(m[:, 0, :]), None
            else:
                continue
            cell.get_dropout_mask = lambda step, ins=ins: ins
            cell.get_recurrent_dropout_mask = lambda step, recs=recs: recs


TRAINING_SEED = 2026

MODEL_CASES = [
    # name, mode, model kind, dtype, loss, optimizer, (n, t, i), batch, epochs
    ("grads_lstm_dense_f64", "grads", "lstm_dense", "float64", "mse", None, (4, 6, 3), 0, 0),
    ("grads_lstm_dense_f32", "grads", "lstm_dense", "float32", "mse", None, (4, 6, 3), 0, 0),
    ("grads_masked_f64", "grads", "masked_seq", "float64", "mse", None, (4, 6, 3), 0, 0),
    ("grads_softmax_f64", "grads", "stack_softmax", "float64",
     "sparse_categorical_crossentropy", None, (4, 5, 3), 0, 0),
    ("grads_sigmoid_f64", "grads", "sigmoid", "float64", "binary_crossentropy", None,
     (4, 5, 2), 0, 0),
    ("grads_mae_f64", "grads", "lstm_dense", "float64", "mae", None, (4, 6, 3), 0, 0),
    ("grads_bce_probs_f64", "grads", "hard_sigmoid_out", "float64", "binary_crossentropy",
     None, (4, 5, 2), 0, 0),
    ("grads_cce_probs_f64", "grads", "softplus_out", "float64", "categorical_crossentropy",
     None, (4, 5, 2), 0, 0),
    ("grads_cce_softmax_f64", "grads", "softmax_out", "float64", "categorical_crossentropy",
     None, (4, 5, 2), 0, 0),
    ("grads_gru_rnn_f64", "grads", "gru_rnn", "float64", "mse", None, (4, 6, 3), 0, 0),
    ("fit_gru_rnn", "fit", "gru_rnn", "float32", "mse",
     ("adam", dict(learning_rate=0.02, global_clipnorm=0.5)), (16, 6, 3), 4, 5),
    ("grads_bidi_f64", "grads", "bidi", "float64", "mse", None, (4, 6, 3), 0, 0),
    ("grads_bidi_mul_f64", "grads", "bidi_mul", "float64", "mse", None, (3, 5, 2), 0, 0),
    ("fit_bidi", "fit", "bidi", "float32", "mse", ("adam", dict(learning_rate=0.02)),
     (16, 6, 3), 4, 5),
    ("fit_adam", "fit", "lstm_dense", "float32", "mse", ("adam", dict(learning_rate=0.01)),
     (32, 6, 3), 8, 5),
    ("fit_sgd_nesterov", "fit", "stack_softmax", "float32", "sparse_categorical_crossentropy",
     ("sgd", dict(learning_rate=0.1, momentum=0.9, nesterov=True, clipnorm=1.0)),
     (24, 5, 3), 6, 5),
    ("fit_rmsprop", "fit", "sigmoid", "float32", "binary_crossentropy",
     ("rmsprop", dict(learning_rate=0.01, clipvalue=0.05)), (20, 5, 2), 5, 5),
    ("fit_adamw_masked", "fit", "masked_seq", "float32", "mae",
     ("adamw", dict(learning_rate=0.01, weight_decay=0.05)), (16, 6, 3), 4, 5),
    # Dropout layers (inference mode in the tape: model(x) is training=False) and
    # TimeDistributed(Dense)
    ("grads_dropout_td_f64", "grads", "dropout_td", "float64", "mse", None, (4, 6, 3), 0, 0),
    # the recurrent layers' input dropout (inactive in the tape's inference mode)
    ("grads_rnn_dropout_f64", "grads", "rnn_dropout", "float64", "mse", None, (4, 6, 3), 0,
     0),
    # an Embedding (mask_zero) first: token ids in, the table's gradient densified
    ("grads_embedding_f64", "grads", "embedding", "float64",
     "sparse_categorical_crossentropy", None, (5, 6, 0), 0, 0),
    ("fit_embedding", "fit", "embedding", "float32", "sparse_categorical_crossentropy",
     ("adam", dict(learning_rate=0.02)), (16, 6, 0), 4, 5),
    # training mode (model(x, training=True)) with the crate's masks for TRAINING_SEED:
    # Dropout, recurrent layers' dropout and recurrent_dropout (Keras's implementation 1:
    # per-gate masks), masked, go_backwards, Bidirectional, GRU both forms
    ("grads_rec_dropout_f64", "grads_train", "rec_dropout", "float64", "mse", None,
     (4, 6, 3), 0, 0),
    ("grads_rec_dropout_f32", "grads_train", "rec_dropout_gpu", "float32", "mse", None,
     (5, 7, 3), 0, 0),
    # the layers around the recurrent ones: Conv1D (causal dilated, same strided, valid
    # without bias), MaxPooling1D, AveragePooling1D, LayerNormalization (scale/center off),
    # GlobalMax/AveragePooling1D (masked), SpatialDropout1D, RepeatVector, Flatten,
    # Activation(softmax) with the cross-entropy from its logits
    ("grads_pool_norm_f64", "grads", "pool_norm", "float64", "mse", None, (4, 12, 3), 0, 0),
    ("grads_conv_same_f64", "grads", "conv_same", "float64", "mse", None, (3, 11, 2), 0, 0),
    ("grads_embed_pool_f64", "grads", "embed_pool", "float64",
     "sparse_categorical_crossentropy", None, (5, 7, 0), 0, 0),
    ("grads_embed_pool_train_f64", "grads_train", "embed_pool", "float64",
     "sparse_categorical_crossentropy", None, (5, 7, 0), 0, 0),
    ("grads_repeat_flatten_f64", "grads", "repeat_flatten", "float64",
     "categorical_crossentropy", None, (4, 5, 2), 0, 0),
    ("fit_pool_norm", "fit", "pool_norm", "float32", "mse",
     ("adam", dict(learning_rate=0.01)), (16, 12, 3), 4, 5),
    # BatchNormalization: the moving statistics in inference mode; the batch's (masked and
    # not, 3-D and 2-D) in training mode; fit moves the moving ones
    ("grads_bn_f64", "grads", "batch_norm", "float64", "mse", None, (4, 6, 3), 0, 0),
    ("grads_bn_train_f64", "grads_train", "batch_norm", "float64", "mse", None, (5, 6, 3),
     0, 0),
    ("fit_bn", "fit", "batch_norm", "float32", "mse", ("adam", dict(learning_rate=0.01)),
     (16, 6, 3), 4, 5),
    # GaussianNoise and GaussianDropout in training mode, the crate's draws given to Keras
    ("grads_noise_train_f64", "grads_train", "noise", "float64", "mse", None, (4, 6, 3), 0,
     0),
    # Permute (steps and features swapped) and Reshape (an inferred axis) between recurrent
    # layers
    ("grads_reshape_permute_f64", "grads", "reshape_permute", "float64", "mse", None,
     (3, 5, 4), 0, 0),
]
for name, mode, kind, dtype, loss, opt, (n, t, i), batch, epochs in MODEL_CASES:
    model = build(kind, dtype, t, i)
    randomize(model)
    x, y = data(kind, dtype, n, t, i)
    model.save(os.path.join(OUT, f"{name}.keras"))
    arrays = dict(x=x, y=y)
    # (the trainable weights, then the non-trainable ones: get_weights() interleaves them
    # per layer)
    for k, w in enumerate(model.trainable_weights):
        arrays[f"w{k}"] = np.asarray(w)
    for k, w in enumerate(model.non_trainable_weights):
        arrays[f"s{k}"] = np.asarray(w)
    meta = dict(mode=mode, loss=loss, dtype=dtype)
    ids = kind in ("embedding", "embed_pool")
    if mode in ("grads", "grads_train"):
        training = mode == "grads_train"
        if training:
            inject_masks(model, TRAINING_SEED, n, dtype)
            meta.update(seed=TRAINING_SEED)
        # (token ids have no gradient: grad_x is zeros)
        xv = tf.constant(x.astype("int32")) if ids else tf.Variable(x)
        with tf.GradientTape() as tape:
            pred = model(xv, training=training)
            value = loss_object(loss, dtype)(y, pred)
        grads = tape.gradient(value, model.trainable_weights + ([] if ids else [xv]))
        if ids:
            grads = [tf.convert_to_tensor(g) for g in grads] + [np.zeros_like(x)]
        arrays["loss"] = np.asarray(value)
        arrays["pred"] = np.asarray(pred)
        for k, g in enumerate(grads[:-1]):
            arrays[f"grad{k}"] = np.asarray(g)
        arrays["grad_x"] = np.asarray(grads[-1])
    else:
        model.compile(optimizer=optimizer(opt), loss=loss)
        hist = model.fit(x.astype("int32") if ids else x, y, batch_size=batch, epochs=epochs,
                         shuffle=False, verbose=0)
        for k, w in enumerate(model.trainable_weights):
            arrays[f"final{k}"] = np.asarray(w)
        for k, w in enumerate(model.non_trainable_weights):
            arrays[f"final_state{k}"] = np.asarray(w)
        arrays["epoch_loss"] = np.asarray(hist.history["loss"], dtype="float64")
        meta.update(optimizer=dict(kind=opt[0], **opt[1]), batch_size=batch, epochs=epochs)
    np.savez(os.path.join(OUT, f"{name}.npz"), **arrays)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(name, mode, {k: np.shape(v) for k, v in arrays.items() if k in ("loss", "epoch_loss")})
