#!/usr/bin/env python3
"""Writes tests/data/training/graph_*: gradients and training runs of functional graphs
recorded from Keras 3.15.1 (TensorFlow backend, CPU) for the crate's `train::Functional`.

Models: the ten keras-zoo models (read from ../shared/golden/keras-zoo, not copied), and
`graph_mix.keras` built here: a masked input and a second input through one shared LSTM
(two calls), a Concatenate along time (masks concatenated), a GRU returning its state into
a SimpleRNN's initial_state, Attention (concat scores, scale, returned scores) and causal
AdditiveAttention, Minimum/Maximum/Subtract/Multiply/Average, GlobalAveragePooling1D, and
four outputs (a state among them) with a loss each; and `graph_reg.keras`: L1, L2 and L1L2
weight regularizers on an Embedding, LSTM, Conv1D, LayerNormalization, Bidirectional(GRU),
BatchNormalization, TimeDistributed(Dense) and Dense, activity regularizers on an LSTM, a Dense,
a GRU's returned state and an ActivityRegularization layer (their losses join the loss as
`model.losses`; an activity loss divided by the batch size); and `graph_frozen.keras`: frozen layers (trainable=False) beside trainable
ones; and `graph_constraint.keras`: MaxNorm, NonNeg, UnitNorm and MinMaxNorm constraints on
every kind of weight (Keras's optimizer applies them after each step); and `graph_dot.keras`:
Luong attention written with Dot layers and a cosine similarity (Dot with normalize); and
`graph_logits.keras`: cross-entropy outputs (taken from their logits) that other layers and
an activity regularizer read too; and `graph_shared_bn.keras`: BatchNormalization layers called
twice in a step (their moving statistics move in each call, in Keras's run order); and
`graph_orthogonal.keras`: OrthogonalRegularizer on weights and as activity regularizers; and
`graph_bidi_activity.keras`: activity regularizers inside Bidirectional and TimeDistributed; and
`graph_mha.keras`: MultiHeadAttention, causal self-attention and cross-attention with scores; and
`graph_attn_dropout.keras`: Attention and MultiHeadAttention with dropout; and
`graph_conv_lstm.keras`: ConvLSTM2D and ConvLSTM1D; and `graph_conv2d.keras`: a CRNN's
Conv2D and 2-D pooling layers; and `graph_ctc.keras`: a small OCR CRNN under Keras's CTC loss. The state saved (s0, final_state0, ...) is BatchNormalization's moving statistics.

Per case NAME.npz + NAME.json:
- `graph_grads_<model>_f64`, `_f32`: inputs x0, x1, ..., targets y0, y1, ..., the trainable
  weights w0, w1, ... (float64 cases: the float32 model's values in float64, the model
  rebuilt with a float64 policy), the loss `Σ weight · loss_k(y_k, pred_k) + Σ model.losses`
  (Keras's loss objects, the outputs' masks applied; the regularizers' losses) and its tf.GradientTape gradients w.r.t. every
  trainable weight (grad0, ...) and every float input (grad_x0, ...; zeros for token ids),
  the predictions pred0, ...
- `graph_train_grads_<model>_f64`, `_f32` (graph_attn_dropout): the same in training mode
  (`training_seed` in the json), with the crate's attention dropout masks given to Keras.
- `graph_fit_<model>`: `compile(loss=[...], loss_weights=[...])` then
  `fit(xs, ys, batch_size, epochs, shuffle=False)` in float32: final0, ... (trainable),
  final_state0, ... (non-trainable), epoch_loss.
The json names the model file (`zoo:NAME` or `NAME.keras` here), the losses (null for an
output without one) and their weights.

Run: KERAS_BACKEND=tensorflow python scripts/record_graph_training.py [OUT_DIR [NAME,...]]
"""
import json
import math
import os
import sys
import zlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
import keras
from keras import layers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "data", "training")
ZOO = os.path.join(HERE, "..", "..", "shared", "golden", "keras-zoo")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(7)

LOSSES = {
    "mse": keras.losses.MeanSquaredError,
    "mae": keras.losses.MeanAbsoluteError,
    "binary_crossentropy": keras.losses.BinaryCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "ctc": keras.losses.CTC,
}


def set_uniform(model, bound, skip_bn=False):
    """Every layer's weights drawn uniform in [-bound, bound] (moving variances in [0.5, 1.5];
    BatchNormalization layers left as built with skip_bn), layer by layer, weight by weight."""
    for layer in model.layers:
        if not layer.weights or (skip_bn and isinstance(layer, layers.BatchNormalization)):
            continue
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                           if w.path.endswith("moving_variance") else
                           rng.uniform(-bound, bound, w.shape).astype("float32")
                           for w in layer.weights])


def graph_mix():
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    a = keras.Input((7, 3), name="a")
    b = keras.Input((5, 3), name="b")
    m = layers.Masking(0.0)(a)
    shared = layers.LSTM(4, return_sequences=True, name="shared_lstm")
    sa, sb = shared(m), shared(b)
    cat_t = layers.Concatenate(axis=1)([sa, sb])
    gs, gh = layers.GRU(5, return_sequences=True, return_state=True)(cat_t)
    dec = layers.SimpleRNN(5, return_sequences=True)(b, initial_state=gh)
    att, scores = layers.Attention(score_mode="concat", use_scale=True)(
        [dec, gs], return_attention_scores=True)
    att2 = layers.AdditiveAttention()([dec, dec], use_causal_mask=True)
    mn = layers.Minimum()([att, att2])
    mx = layers.Maximum()([att, att2, dec])
    sub = layers.Subtract()([mn, mx])
    mul = layers.Multiply()([att, att2])
    av = layers.Average()([sub, mul, dec])
    pooled = layers.GlobalAveragePooling1D()(layers.Concatenate()([sub, av]))
    out1 = layers.Dense(2, name="out1")(pooled)
    out2 = layers.Dense(3, activation="softmax", name="out2")(att)
    out4 = layers.Dense(1, name="out4")(layers.Flatten()(scores))
    model = keras.Model([a, b], [out1, out2, gh, out4], name="graph_mix")
    set_uniform(model, 0.6)
    x0 = rng.normal(size=(4, 7, 3)).astype("float32")
    x0[0, 5:] = 0.0
    x0[2, 3:] = 0.0
    x0[3, 1] = 0.0
    x1 = rng.normal(size=(4, 5, 3)).astype("float32")
    return model, [x0, x1]


def graph_reg():
    """Weight regularizers on every kind of weight the crate places (L1, L2, L1L2), and
    activity regularizers (a layer's, ActivityRegularization's, on every output of a call)."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    R = keras.regularizers
    ids = keras.Input((6,), dtype="int32", name="ids")
    feats = keras.Input((6, 3), name="feats")
    e = layers.Embedding(9, 4, mask_zero=True, embeddings_regularizer=R.L2(0.02))(ids)
    h = layers.LSTM(5, return_sequences=True, kernel_regularizer=R.L2(0.01),
                    recurrent_regularizer=R.L1(0.005),
                    bias_regularizer=R.L1L2(l1=0.003, l2=0.02),
                    activity_regularizer=R.L1(0.01))(e)
    c = layers.Conv1D(4, 2, padding="same", kernel_regularizer=R.L1L2(l1=0.01, l2=0.01),
                      bias_regularizer=R.L2(0.05))(feats)
    n = layers.LayerNormalization(gamma_regularizer=R.L2(0.03), beta_regularizer=R.L1(0.02))(c)
    n = layers.ActivityRegularization(l1=0.01, l2=0.02)(n)
    g = layers.Bidirectional(layers.GRU(3, return_sequences=True, kernel_regularizer=R.L2(0.01),
                                        recurrent_regularizer=R.L2(0.02)))(n)
    pooled = layers.GlobalAveragePooling1D()(layers.Concatenate()([h, g]))
    bn = layers.BatchNormalization(gamma_regularizer=R.L2(0.01))(pooled)
    td = layers.TimeDistributed(layers.Dense(2, kernel_regularizer=R.L1(0.01)))(g)
    out = layers.Dense(2, kernel_regularizer=R.L1(0.01), bias_regularizer=R.L2(0.1),
                       activity_regularizer=R.L2(0.05))(bn)
    # (a state output regularized too: Keras regularizes every output of the call)
    _, gh = layers.GRU(3, return_state=True, activity_regularizer=R.L2(0.2))(td)
    out = layers.Add()([out, layers.Dense(2)(gh)])
    model = keras.Model([ids, feats], [out, td], name="graph_reg")
    set_uniform(model, 0.6, skip_bn=True)
    x0 = rng.randint(1, 9, size=(4, 6)).astype("int32")
    x0[0, 4:] = 0
    x0[2, 2:] = 0
    x1 = rng.normal(size=(4, 6, 3)).astype("float32")
    return model, [x0, x1]


def graph_frozen():
    """Frozen layers (trainable=False): an Embedding, an LSTM with a regularizer (not added:
    Keras counts only trainable weights'), a Bidirectional(GRU), a BatchNormalization (in
    inference mode: its moving statistics stay), beside trainable Conv1D and Dense."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    ids = keras.Input((6,), dtype="int32", name="ids")
    feats = keras.Input((6, 3), name="feats")
    emb = layers.Embedding(9, 4, mask_zero=True)
    lstm = layers.LSTM(5, return_sequences=True, kernel_regularizer=keras.regularizers.L2(0.1))
    bn = layers.BatchNormalization()
    bidi = layers.Bidirectional(layers.GRU(3, return_sequences=True))
    h = lstm(emb(ids))
    g = bidi(layers.Conv1D(4, 2, padding="same")(bn(feats)))
    pooled = layers.GlobalAveragePooling1D()(layers.Concatenate()([h, g]))
    out = layers.Dense(2)(pooled)
    model = keras.Model([ids, feats], out, name="graph_frozen")
    set_uniform(model, 0.6)
    for layer in (emb, lstm, bn, bidi):
        layer.trainable = False
    x0 = rng.randint(1, 9, size=(4, 6)).astype("int32")
    x0[1, 3:] = 0
    x1 = rng.normal(size=(4, 6, 3)).astype("float32")
    return model, [x0, x1]


def graph_constraint():
    """Weight constraints (MaxNorm, NonNeg, UnitNorm, MinMaxNorm; one axis, several, the
    last, every axis) on every kind of weight the crate places, applied by Keras's optimizer
    after each step; a frozen Dense's NonNeg is not (its kernel is not trained)."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    C = keras.constraints
    ids = keras.Input((6,), dtype="int32", name="ids")
    feats = keras.Input((6, 3), name="feats")
    e = layers.Embedding(9, 4, mask_zero=True, embeddings_constraint=C.UnitNorm(axis=1))(ids)
    h = layers.LSTM(5, return_sequences=True, kernel_constraint=C.MaxNorm(0.5),
                    recurrent_constraint=C.UnitNorm(axis=0), bias_constraint=C.NonNeg())(e)
    c = layers.Conv1D(4, 2, padding="same", kernel_constraint=C.MaxNorm(0.7, axis=[0, 1]),
                      bias_constraint=C.NonNeg())(feats)
    n = layers.LayerNormalization(gamma_constraint=C.MinMaxNorm(0.5, 1.0, rate=0.5, axis=0),
                                  beta_constraint=C.NonNeg())(c)
    g = layers.Bidirectional(layers.GRU(3, return_sequences=True,
                                        kernel_constraint=C.MaxNorm(0.5),
                                        recurrent_constraint=C.NonNeg(),
                                        bias_constraint=C.MinMaxNorm(0.2, 0.4, axis=-1)))(n)
    pooled = layers.GlobalAveragePooling1D()(layers.Concatenate()([h, g]))
    bn = layers.BatchNormalization(gamma_constraint=C.NonNeg(),
                                   beta_constraint=C.MaxNorm(0.3, axis=None))(pooled)
    td = layers.TimeDistributed(layers.Dense(2, kernel_constraint=C.UnitNorm()))(g)
    out = layers.Dense(2, kernel_constraint=C.MinMaxNorm(0.3, 0.6),
                       bias_constraint=C.MaxNorm(0.1, axis=None))(bn)
    frozen = layers.Dense(2, kernel_constraint=C.NonNeg(), trainable=False)
    out = layers.Add()([out, frozen(pooled)])
    model = keras.Model([ids, feats], [out, td], name="graph_constraint")
    set_uniform(model, 0.6, skip_bn=True)
    x0 = rng.randint(1, 9, size=(4, 6)).astype("int32")
    x0[1, 4:] = 0
    x0[3, 1:] = 0
    x1 = rng.normal(size=(4, 6, 3)).astype("float32")
    return model, [x0, x1]


def graph_dot():
    """Dot layers: Luong attention written out (Dot([2, 2]) scores, a softmax, Dot([2, 1])
    context) over an encoder's sequence with its states into the decoder, and a cosine
    similarity (Dot(axes=1, normalize=True)) of two pooled vectors as a second output."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    enc_in = keras.Input((7, 3), name="enc")
    dec_in = keras.Input((5, 2), name="dec")
    enc_seq, eh, ec = layers.LSTM(4, return_sequences=True, return_state=True)(
        layers.Masking(0.0)(enc_in))
    dec_seq = layers.LSTM(4, return_sequences=True)(dec_in, initial_state=[eh, ec])
    scores = layers.Dot(axes=[2, 2])([dec_seq, enc_seq])
    weights = layers.Activation("softmax")(scores)
    context = layers.Dot(axes=[2, 1])([weights, enc_seq])
    joined = layers.Concatenate()([context, dec_seq])
    out = layers.TimeDistributed(layers.Dense(3, activation="softmax"))(joined)
    a = layers.GlobalAveragePooling1D()(enc_seq)
    b = layers.Dense(4)(layers.GlobalAveragePooling1D()(dec_seq))
    cosine = layers.Dot(axes=1, normalize=True)([a, b])
    model = keras.Model([enc_in, dec_in], [out, cosine], name="graph_dot")
    set_uniform(model, 0.6)
    x0 = rng.normal(size=(4, 7, 3)).astype("float32")
    x0[1, 5:] = 0.0
    x0[3, 2:] = 0.0
    x1 = rng.normal(size=(4, 5, 2)).astype("float32")
    return model, [x0, x1]


def graph_logits():
    """Cross-entropy outputs Keras takes from their logits that are read by more: a softmax
    Dense with an activity regularizer whose probabilities feed another output's Dense, and a
    sigmoid Activation layer's output added into a third output."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    x_in = keras.Input((6, 3), name="x")
    h = layers.GRU(5)(layers.Masking(0.0)(x_in))
    probs = layers.Dense(3, activation="softmax",
                         activity_regularizer=keras.regularizers.L2(0.3))(h)
    after = layers.Dense(2)(probs)
    gate = layers.Activation("sigmoid")(layers.Dense(2)(h))
    mixed = layers.Add()([gate, after])
    model = keras.Model(x_in, [probs, gate, mixed], name="graph_logits")
    set_uniform(model, 0.8)
    x = rng.normal(size=(4, 6, 3)).astype("float32")
    x[2, 4:] = 0.0
    return model, [x]


def graph_shared_bn():
    """Shared BatchNormalization layers in training mode: one (momentum 0.6) on two inputs of
    different means at the same depth (a siamese pair), one (momentum 0.7) on a tensor and
    again on a Dense of its own output, one (momentum 0.8) on both branches' LSTM states.
    Keras moves a layer's moving statistics in each call, in its run order (map_graph's
    depths, deepest first), so a step composes a shared layer's updates."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    a = keras.Input((6, 3), name="a")
    b = keras.Input((6, 3), name="b")
    bn = layers.BatchNormalization(momentum=0.6)
    again = layers.BatchNormalization(momentum=0.7)
    states = layers.BatchNormalization(momentum=0.8)
    lstm = layers.LSTM(4)
    ha = lstm(bn(a))
    # (a tanh between: a bias straight into a BatchNormalization has a zero gradient, and
    # Adam turns its rounding noise into steps)
    hb = lstm(again(layers.Dense(3, activation="tanh")(again(bn(b)))))
    out = layers.Dense(2)(layers.Concatenate()([states(ha), states(hb)]))
    model = keras.Model([a, b], out, name="graph_shared_bn")
    set_uniform(model, 0.6)
    x0 = (rng.normal(size=(4, 6, 3)) + 2.0).astype("float32")
    x1 = (2.0 * rng.normal(size=(4, 6, 3)) - 3.0).astype("float32")
    return model, [x0, x1]


def graph_orthogonal():
    """OrthogonalRegularizer (rows and columns) on an Embedding, an LSTM's kernel and recurrent
    kernel, a TimeDistributed Dense's kernel and a Dense's, beside an L2; as a GRU's and a
    Dense's activity regularizer on their rank-2 outputs."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    O = keras.regularizers.OrthogonalRegularizer
    ids = keras.Input((6,), dtype="int32", name="ids")
    h = layers.Embedding(7, 4, embeddings_regularizer=O(0.3, mode="columns"))(ids)
    h = layers.LSTM(5, return_sequences=True, kernel_regularizer=O(0.2, mode="columns"),
                    recurrent_regularizer=O(0.4), bias_regularizer=keras.regularizers.L2(0.1))(h)
    h = layers.TimeDistributed(layers.Dense(3, kernel_regularizer=O(0.5)))(h)
    g = layers.GRU(4, activity_regularizer=O(0.6))(h)
    out = layers.Dense(3, kernel_regularizer=O(0.25, mode="columns"),
                       activity_regularizer=O(0.7, mode="columns"))(g)
    model = keras.Model(ids, out, name="graph_orthogonal")
    set_uniform(model, 0.8)
    x = rng.randint(0, 7, size=(4, 6)).astype("int32")
    return model, [x]


def graph_bidi_activity():
    """Activity regularizers inside wrappers: a Bidirectional(LSTM) (sum merge, masked
    sequences) whose inner LSTM has one (Keras calls each direction as a layer: r(y_dir) /
    batch for each), a Bidirectional with its own backward layer (an L1 forward, an
    OrthogonalRegularizer backward, concat merge), and a TimeDistributed(Dense) whose inner
    Dense has one (Keras 3 runs the inner call: not applied)."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    x_in = keras.Input((6, 3), name="x")
    h = layers.Masking(0.0)(x_in)
    h = layers.Bidirectional(
        layers.LSTM(4, return_sequences=True,
                    activity_regularizer=keras.regularizers.L2(0.3)), merge_mode="sum")(h)
    h = layers.TimeDistributed(
        layers.Dense(3, activity_regularizer=keras.regularizers.L2(5.0)))(h)
    g = layers.Bidirectional(
        layers.GRU(3, activity_regularizer=keras.regularizers.L1(0.2)),
        backward_layer=layers.GRU(3, go_backwards=True,
                                  activity_regularizer=keras.regularizers.OrthogonalRegularizer(0.5)),
        merge_mode="concat")(h)
    out = layers.Dense(2)(g)
    model = keras.Model(x_in, out, name="graph_bidi_activity")
    set_uniform(model, 0.8)
    x = rng.normal(size=(4, 6, 3)).astype("float32")
    x[1, 4:] = 0.0
    x[3, 2:] = 0.0
    return model, [x]


def graph_mha():
    """MultiHeadAttention: a causal self-attention (value_dim apart from key_dim, biases)
    over a masked LSTM sequence (Keras's fused dot-product path, the masks combined), and a
    cross-attention without biases to a second input, its scores returned
    (Keras's explicit softmax path) and read by a second output."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    x_in = keras.Input((6, 4), name="x")
    c_in = keras.Input((6, 3), name="context")
    h = layers.Masking(0.0)(x_in)
    h = layers.LSTM(5, return_sequences=True)(h)
    a = layers.MultiHeadAttention(2, 3, value_dim=2, name="self_mha")(h, h, use_causal_mask=True)
    o, scores = layers.MultiHeadAttention(2, 2, use_bias=False, output_shape=4,
                                          name="cross_mha")(a, c_in,
                                                            return_attention_scores=True)
    out1 = layers.Dense(2, name="out1")(layers.GlobalAveragePooling1D()(o))
    out2 = layers.Dense(1, name="out2")(layers.Flatten()(scores))
    model = keras.Model([x_in, c_in], [out1, out2], name="graph_mha")
    set_uniform(model, 0.8)
    x = rng.normal(size=(4, 6, 4)).astype("float32")
    x[1, 4:] = 0.0
    x[2, 0] = 0.0
    c = rng.normal(size=(4, 6, 3)).astype("float32")
    return model, [x, c]


def graph_attn_dropout():
    """Attention (dot scores, returned: Keras returns them after its dropout) and
    MultiHeadAttention (causal, scores returned: before its dropout) with dropout over a
    masked LSTM sequence. Recorded in inference mode (a MultiHeadAttention with dropout takes
    Keras's scores path even then) and in training mode with the crate's masks
    (`graph_train_grads_*`, see inject_attention_masks)."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    x_in = keras.Input((5, 3), name="x")
    h = layers.Masking(0.0)(x_in)
    h = layers.LSTM(4, return_sequences=True)(h)
    a, sc = layers.Attention(dropout=0.3, name="att")([h, h], return_attention_scores=True)
    m, ms = layers.MultiHeadAttention(2, 3, dropout=0.25, name="mha")(
        a, h, use_causal_mask=True, return_attention_scores=True)
    out1 = layers.Dense(2, name="out1")(layers.GlobalAveragePooling1D()(m))
    out2 = layers.Dense(1, name="out2")(layers.Flatten()(sc))
    out3 = layers.Dense(1, name="out3")(layers.Flatten()(ms))
    model = keras.Model(x_in, [out1, out2, out3], name="graph_attn_dropout")
    set_uniform(model, 0.8)
    x = rng.normal(size=(4, 5, 3)).astype("float32")
    x[1, 3:] = 0.0
    x[3, 0] = 0.0
    return model, [x]


# The crate's attention dropout masks in training mode (src/train/layers/attention.rs,
# mha.rs): call k of the graph (its index among the config's layers, inputs left out) draws
# its [B, Tq, Tv] (Attention) or [B, heads, Tq, Tv] (MultiHeadAttention) scale mask from
# SplitMix64(seed ^ k·0xD1B54A32D192ED03), row-major, 1/(1-rate) where the draw is >= rate.
from keras_recording import layer_stream, scale_mask


TRAINING_SEED = 2026
# the query and key lengths of each attention layer with dropout (heads first for MHA)
ATTENTION_DROPOUT = {"graph_attn_dropout": {"att": (5, 5), "mha": (2, 5, 5)}}
MASKS = {}


def _injected_dropout(inputs, rate, noise_shape=None, seed=None):
    m = MASKS.get(id(seed))
    if m is None:
        raise RuntimeError("a dropout without an injected mask")
    return inputs * tf.constant(m, inputs.dtype)


keras.src.backend.random.dropout = _injected_dropout


def inject_attention_masks(model, name, b, dtype):
    """Keyed by each layer's seed generator, which Keras passes to backend.random.dropout."""
    MASKS.clear()
    calls = [l["config"]["name"] for l in model.get_config()["layers"]
             if l["class_name"] != "InputLayer"]
    for lname, shape in ATTENTION_DROPOUT.get(name, {}).items():
        layer = model.get_layer(lname)
        k = calls.index(lname)
        rng = layer_stream(TRAINING_SEED, k)
        if isinstance(layer, layers.MultiHeadAttention):
            gen, rate = layer._dropout_layer.seed_generator, layer.dropout
        else:
            gen, rate = layer.seed_generator, layer.dropout
        MASKS[id(gen)] = scale_mask(rate, (b,) + shape, rng, dtype)


def graph_conv_lstm():
    """ConvLSTM2D over frames (padding same, sequences, then strides 2 and valid padding,
    go_backwards) and ConvLSTM1D (dilation 2, relu, no bias) over a second input, an output
    each."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    v_in = keras.Input((4, 5, 6, 2), name="frames")
    s_in = keras.Input((5, 7, 3), name="signals")
    h = layers.ConvLSTM2D(3, (3, 3), padding="same", return_sequences=True, name="cl2a")(v_in)
    h = layers.ConvLSTM2D(2, (2, 3), strides=(2, 1), padding="valid", go_backwards=True,
                          name="cl2b")(h)
    out1 = layers.Dense(2, name="out1")(layers.Flatten()(h))
    g = layers.ConvLSTM1D(2, 3, dilation_rate=2, activation="relu", use_bias=False,
                          return_sequences=True, name="cl1")(s_in)
    out2 = layers.Dense(1, name="out2")(layers.GlobalAveragePooling1D()(
        layers.Reshape((5, -1))(g)))
    model = keras.Model([v_in, s_in], [out1, out2], name="graph_conv_lstm")
    set_uniform(model, 0.6)
    v = rng.normal(size=(3, 4, 5, 6, 2)).astype("float32")
    sg = rng.normal(size=(3, 5, 7, 3)).astype("float32")
    return model, [v, sg]


def graph_conv2d():
    """A CRNN's image layers: Conv2D (same with relu, valid with tanh, dilated without bias,
    strided same), MaxPooling2D, AveragePooling2D (same), their frames reshaped into an
    LSTM's sequence; GlobalMaxPooling2D and GlobalAveragePooling2D (keepdims) heads."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    x_in = keras.Input((8, 6, 2), name="image")
    c1 = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x_in)
    p1 = layers.MaxPooling2D(2, name="p1")(c1)
    c2 = layers.Conv2D(3, 2, padding="valid", activation="tanh", name="c2")(p1)
    a2 = layers.AveragePooling2D(2, strides=1, padding="same", name="a2")(c2)
    seq = layers.Reshape((3, 6), name="frames")(a2)
    out1 = layers.Dense(2, name="out1")(layers.LSTM(4, name="lstm")(seq))
    c3 = layers.Conv2D(2, 3, dilation_rate=2, padding="same", use_bias=False, name="c3")(x_in)
    c4 = layers.Conv2D(3, 3, strides=2, padding="same", name="c4")(c3)
    out2 = layers.Dense(1, name="out2")(layers.GlobalMaxPooling2D(name="gmax")(c4))
    g = layers.GlobalAveragePooling2D(keepdims=True, name="gavg")(c1)
    out3 = layers.Dense(1, name="out3")(layers.Flatten()(g))
    model = keras.Model(x_in, [out1, out2, out3], name="graph_conv2d")
    set_uniform(model, 0.5)
    return model, [rng.normal(size=(3, 8, 6, 2)).astype("float32")]


def graph_ctc():
    """The OCR example's shape, small: Conv2D and MaxPooling2D over an image, its columns
    as a sequence into a Bidirectional LSTM, Dense logits of 5 classes (0 the blank) under
    Keras's CTC loss (labels of 1 to 4 classes, a repeat among them, 0-padded)."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    x_in = keras.Input((12, 4, 1), name="image")
    h = layers.Conv2D(3, 3, padding="same", activation="relu", name="conv")(x_in)
    h = layers.MaxPooling2D((1, 2), name="pool")(h)
    h = layers.Reshape((12, 6), name="columns")(h)
    h = layers.Bidirectional(layers.LSTM(4, return_sequences=True), name="bilstm")(h)
    out = layers.Dense(5, name="logits")(h)
    model = keras.Model(x_in, out, name="graph_ctc")
    set_uniform(model, 0.5)
    return model, [rng.normal(size=(4, 12, 4, 1)).astype("float32")]


def state_of(m):
    """The non-trainable variables the crate keeps as state (BatchNormalization's moving
    statistics; a frozen layer's weights are not state)."""
    return [w for w in m.non_trainable_weights
            if w.path.endswith(("moving_mean", "moving_variance"))]


BUILT = {"graph_mix": graph_mix, "graph_reg": graph_reg, "graph_frozen": graph_frozen,
         "graph_constraint": graph_constraint, "graph_dot": graph_dot,
         "graph_logits": graph_logits, "graph_shared_bn": graph_shared_bn,
         "graph_orthogonal": graph_orthogonal, "graph_bidi_activity": graph_bidi_activity,
         "graph_mha": graph_mha, "graph_attn_dropout": graph_attn_dropout,
         "graph_conv_lstm": graph_conv_lstm, "graph_conv2d": graph_conv2d,
         "graph_ctc": graph_ctc}

# name, source, losses (None: no loss), loss weights, fit?
CASES = [
    ("p_embedding_pooling", "zoo", ["categorical_crossentropy"], [1.0], False),
    ("p_embedding_gru", "zoo", ["binary_crossentropy"], [1.0], False),
    ("p_encoder_decoder_states", "zoo", ["categorical_crossentropy", "mse", "mse"],
     [1.0, 0.5, 0.25], True),
    ("p_gru_encoder_decoder", "zoo", ["mse"], [1.0], True),
    ("p_simplernn_autoencoder", "zoo", ["mse"], [1.0], True),
    ("p_merge_layers", "zoo", ["mse"], [1.0], True),
    ("p_conv_pool_norm", "zoo", ["mse"], [1.0], True),
    ("p_attention_layers", "zoo", ["mse"], [1.0], True),
    ("p_functional_masking_states", "zoo", ["mse", "mae", None], [1.0, 0.7, 1.0], True),
    ("p_masked_bigru_tagger", "zoo", ["categorical_crossentropy"], [1.0], True),
    ("graph_mix", "here", ["mse", "categorical_crossentropy", "mse", "mae"],
     [1.0, 0.5, 0.3, 0.2], True),
    ("graph_reg", "here", ["mse", "mse"], [1.0, 0.5], True),
    ("graph_frozen", "here", ["mse"], [1.0], True),
    ("graph_constraint", "here", ["mse", "mse"], [1.0, 0.5], True),
    ("graph_dot", "here", ["categorical_crossentropy", "mse"], [1.0, 0.5], True),
    ("graph_logits", "here", ["categorical_crossentropy", "binary_crossentropy", "mse"],
     [1.0, 0.7, 0.4], True),
    ("graph_shared_bn", "here", ["mse"], [1.0], True),
    ("graph_orthogonal", "here", ["mse"], [1.0], True),
    ("graph_bidi_activity", "here", ["mse"], [1.0], True),
    ("graph_mha", "here", ["mse", "mse"], [1.0, 0.5], True),
    ("graph_attn_dropout", "here", ["mse", "mse", "mse"], [1.0, 0.5, 0.5], False),
    ("graph_conv_lstm", "here", ["mse", "mse"], [1.0, 0.5], True),
    ("graph_conv2d", "here", ["mse", "mse", "mse"], [1.0, 0.5, 0.5], True),
    ("graph_ctc", "here", ["ctc"], [1.0], True),
]


def load(name, source):
    if source == "zoo":
        model = keras.saving.load_model(os.path.join(ZOO, f"{name}.keras"))
        xs = []
        single = os.path.join(ZOO, f"{name}.input.npy")
        if os.path.exists(single):
            xs = [np.load(single)]
        else:
            k = 0
            while os.path.exists(os.path.join(ZOO, f"{name}.input.{k}.npy")):
                xs.append(np.load(os.path.join(ZOO, f"{name}.input.{k}.npy")))
                k += 1
        return model, xs
    model, xs = BUILT[name]()
    model.save(os.path.join(OUT, f"{name}.keras"))
    return model, xs


def as_dtype(model, dtype):
    """The model rebuilt with every float32 policy and input in `dtype`, its weights cast."""
    if dtype == "float32":
        return model
    cfg = json.dumps(keras.saving.serialize_keras_object(model))
    cfg = cfg.replace('"name": "float32"', f'"name": "{dtype}"').replace(
        '"dtype": "float32"', f'"dtype": "{dtype}"')
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    m = keras.saving.deserialize_keras_object(json.loads(cfg))
    m.set_weights([w.astype(dtype) for w in model.get_weights()])
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    return m


def targets(model, xs, losses, n):
    preds = model(xs) if len(xs) > 1 else model(xs[0])
    preds = preds if isinstance(preds, (list, tuple)) else [preds]
    ys = []
    for p, loss in zip(preds, losses):
        shape = (n,) + tuple(p.shape[1:])
        if loss == "ctc":
            # class ids 1..C-1 (0 is the blank), 0-padded at the end, a repeat in row 0
            y = np.zeros((n, 4))
            for r in range(n):
                k = 1 + r % 4
                y[r, :k] = rng.randint(1, p.shape[-1], size=k)
            y[0, :2] = [2, 2]
            ys.append(y.astype("float32"))
            continue
        if loss == "categorical_crossentropy":
            y = rng.uniform(0.05, 1.0, shape)
            y /= y.sum(-1, keepdims=True)
        elif loss == "binary_crossentropy":
            y = (rng.uniform(size=shape) > 0.5).astype("float64")
        else:
            y = rng.normal(size=shape)
        ys.append(y.astype("float32"))
    return ys


def is_ids(x):
    return np.issubdtype(x.dtype, np.integer)


def grads_case(name, model, xs, losses, weights, dtype, training=False):
    m = as_dtype(model, dtype)
    n = xs[0].shape[0]
    ys = [y.astype(dtype) for y in targets(model, xs, losses, n)]
    xs_d = [x if is_ids(x) else x.astype(dtype) for x in xs]
    xv = [tf.constant(x) if is_ids(x) else tf.Variable(x) for x in xs_d]
    if training:
        inject_attention_masks(m, name, n, dtype)
    with tf.GradientTape() as tape:
        preds = m(xv if len(xv) > 1 else xv[0], training=training)
        preds = preds if isinstance(preds, (list, tuple)) else [preds]
        total = 0.0
        for p, y, loss, w in zip(preds, ys, losses, weights):
            if loss is not None:
                total = total + w * LOSSES[loss](dtype=dtype)(y, p)
        # the weight regularizers' losses, as compute_loss adds model.losses
        for extra in m.losses:
            total = total + extra
    floats = [v for v, x in zip(xv, xs_d) if not is_ids(x)]
    g = tape.gradient(total, m.trainable_weights + floats)
    arrays = {}
    for k, x in enumerate(xs_d):
        arrays[f"x{k}"] = x.astype("float64") if is_ids(x) else x
    for k, y in enumerate(ys):
        arrays[f"y{k}"] = y
    for k, w in enumerate(m.trainable_weights):
        arrays[f"w{k}"] = np.asarray(w)
    for k, w in enumerate(state_of(m)):
        arrays[f"s{k}"] = np.asarray(w)
    nw = len(m.trainable_weights)
    for k in range(nw):
        arrays[f"grad{k}"] = np.asarray(tf.convert_to_tensor(g[k]))
    fi = iter(g[nw:])
    for k, x in enumerate(xs_d):
        arrays[f"grad_x{k}"] = np.zeros(x.shape, dtype) if is_ids(x) else np.asarray(next(fi))
    for k, p in enumerate(preds):
        arrays[f"pred{k}"] = np.asarray(p)
    arrays["loss"] = np.asarray(total, dtype=dtype)
    return arrays


# The optimizer of a model's fit: Adam but where noted. graph_mha's key biases have a zero
# gradient in exact arithmetic (a softmax is invariant to them), so their computed gradient
# is rounding noise, which Adam's normalised step would follow at the full learning rate.
FIT_OPTIMIZER = {"graph_mha": dict(kind="sgd", learning_rate=0.05, momentum=0.9)}


def fit_case(model, xs, losses, weights, name=None):
    # more rows: the inputs tiled, the present values jittered (padding stays zero)
    b = xs[0].shape[0]
    reps = max(2, math.ceil(8 / b))
    xf = []
    for x in xs:
        t = np.concatenate([x] * reps, axis=0)
        if not is_ids(x):
            t = (t + 0.1 * rng.normal(size=t.shape) * (t != 0)).astype("float32")
        xf.append(t)
    n = xf[0].shape[0]
    ys = targets(model, xf, losses, n)
    batch = 4
    epochs = math.ceil(20 / math.ceil(n / batch))
    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    arrays = {}
    for k, x in enumerate(xf):
        arrays[f"x{k}"] = x.astype("float64") if is_ids(x) else x
    for k, y in enumerate(ys):
        arrays[f"y{k}"] = y
    for k, w in enumerate(m.trainable_weights):
        arrays[f"w{k}"] = np.asarray(w)
    for k, w in enumerate(state_of(m)):
        arrays[f"s{k}"] = np.asarray(w)
    opt = FIT_OPTIMIZER.get(name, dict(kind="adam", learning_rate=0.01))
    optimizer = (keras.optimizers.SGD(learning_rate=opt["learning_rate"],
                                      momentum=opt["momentum"])
                 if opt["kind"] == "sgd" else keras.optimizers.Adam(learning_rate=0.01))
    m.compile(optimizer=optimizer,
              loss=[LOSSES[l]() if l else None for l in losses], loss_weights=weights)
    hist = m.fit(xf if len(xf) > 1 else xf[0], ys if len(ys) > 1 else ys[0], batch_size=batch,
                 epochs=epochs, shuffle=False, verbose=0)
    for k, w in enumerate(m.trainable_weights):
        arrays[f"final{k}"] = np.asarray(w)
    for k, w in enumerate(state_of(m)):
        arrays[f"final_state{k}"] = np.asarray(w)
    arrays["epoch_loss"] = np.asarray(hist.history["loss"], dtype="float64")
    return arrays, dict(batch_size=batch, epochs=epochs,
                        optimizer=opt)


def write(name, arrays, meta):
    np.savez(os.path.join(OUT, f"{name}.npz"), **arrays)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(name, float(np.asarray(arrays.get("loss", arrays.get("epoch_loss", [0]))).ravel()[-1]))


ONLY = set(sys.argv[2].split(",")) if len(sys.argv) > 2 else None
for name, source, losses, weights, fit in CASES:
    if ONLY and name not in ONLY:
        continue
    # (each case's draws from its own seed: a case recorded alone is the same)
    rng.seed(zlib.crc32(name.encode()))
    model, xs = load(name, source)
    src = f"zoo:{name}" if source == "zoo" else f"{name}.keras"
    # (Keras 3.15.1's OrthogonalRegularizer keeps its factor as a float32 tensor: a float64
    # model fails in it, "expected to be a float tensor but is a double tensor")
    # (and Keras 3.15.1 computes a float64 model's CTC loss in float32: tf.nn.ctc_loss
    # refuses float64)
    f32_only = name in ("graph_orthogonal", "graph_bidi_activity", "graph_ctc")
    for dtype in ("float32",) if f32_only else ("float64", "float32"):
        arrays = grads_case(name, model, xs, losses, weights, dtype)
        tag = "f64" if dtype == "float64" else "f32"
        write(f"graph_grads_{name}_{tag}", arrays,
              dict(mode="grads", model=src, losses=losses, loss_weights=weights, dtype=dtype))
    if name in ATTENTION_DROPOUT:
        for dtype in ("float64", "float32"):
            arrays = grads_case(name, model, xs, losses, weights, dtype, training=True)
            tag = "f64" if dtype == "float64" else "f32"
            write(f"graph_train_grads_{name}_{tag}", arrays,
                  dict(mode="grads", model=src, losses=losses, loss_weights=weights,
                       dtype=dtype, training_seed=TRAINING_SEED))
    if fit:
        arrays, extra = fit_case(model, xs, losses, weights, name)
        write(f"graph_fit_{name}", arrays,
              dict(mode="fit", model=src, losses=losses, loss_weights=weights,
                   dtype="float32", **extra))
