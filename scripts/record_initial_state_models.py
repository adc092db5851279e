"""Models where a recurrent layer takes initial states from the graph while its input is
masked (tests/data/keras/mix3.*, masked_initial_state.*). Keras 3 passes a layer its input's
mask only when the call has one tensor argument: a call with `initial_state=` tensors runs
unmasked, and its outputs still carry the input's mask. Weights drawn uniformly.

mix3: int32 tokens -> Embedding(mask_zero) -> Bidirectional(LSTM, merge_mode=None,
return_state) -> Average/Subtract -> TimeDistributed(Dense) -> Bidirectional(GRU(reset_after=
False), "mul") with initial_state=[h_fwd, h_bwd] -> causal Attention, Multiply,
GlobalMaxPooling1D, Reshape, backwards SimpleRNN with initial_state from a Dense; a second
float input through a grouped causal strided Conv1D and GlobalAveragePooling1D.
masked_initial_state: Masking -> Bidirectional(GRU, "mul") with initial states as inputs.
Run with keras 3.15.1 (TensorFlow backend) in the output directory:

  cd tests/data/keras && python ../../../scripts/record_initial_state_models.py
"""
import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
from keras import layers as L  # noqa: E402

rs = np.random.RandomState(11)


def save(m, name, xs):
    m.save(f"{name}.keras")
    ys = m.predict(xs, verbose=0)
    if not isinstance(ys, list):
        ys = [ys]
    for k, x in enumerate(xs):
        np.save(f"{name}.input.npy" if len(xs) == 1 else f"{name}.input.{k}.npy", x)
    for k, y in enumerate(ys):
        np.save(f"{name}.expected.npy" if len(ys) == 1 else f"{name}.expected.{k}.npy", y)


def randomize(m):
    for layer in m.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([rs.uniform(-0.8, 0.8, w.shape).astype("float32") for w in ws])


keras.utils.set_random_seed(9)
tok = L.Input((9,), dtype="int32")
e = L.Embedding(12, 5, mask_zero=True)(tok)
yf, yb, hf, cf, hb, cb = L.Bidirectional(
    L.LSTM(4, return_sequences=True, return_state=True), merge_mode=None
)(e)
m3 = L.Average()([yf, yb, L.Subtract()([yf, yb])])
td = L.TimeDistributed(L.Dense(4, activation="sigmoid"))(m3)
dec = L.Bidirectional(L.GRU(4, return_sequences=True, reset_after=False), merge_mode="mul")(
    td, initial_state=[hf, hb]
)
att = L.Attention(use_scale=False)([dec, td], use_causal_mask=True)
gm = L.GlobalMaxPooling1D(keepdims=True)(L.Multiply()([att, dec]))
rs_ = L.Reshape((-1, 2))(L.Flatten()(gm))
so, sh = L.SimpleRNN(3, go_backwards=True, return_state=True)(
    rs_, initial_state=[L.Dense(3)(cb)]
)
x2 = L.Input((10, 6))
cv = L.Conv1D(6, 3, strides=2, padding="causal", groups=3, activation="relu")(x2)
ga = L.GlobalAveragePooling1D()(cv)
out = L.Concatenate()([so, sh, ga, L.Dense(2, activation="softmax")(ga)])
model = keras.Model([tok, x2], [out, dec], name="mix3")
randomize(model)
ti = rs.randint(1, 12, (3, 9)).astype("int32")
ti[0, 6:] = 0
ti[2, :] = 0
ti[2, :2] = 3
xi = rs.randn(3, 10, 6).astype("float32")
save(model, "mix3", [ti, xi])

keras.utils.set_random_seed(1)
x = L.Input((6, 3))
h1 = L.Input((4,))
h2 = L.Input((4,))
o = L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="mul")(
    L.Masking(0.0)(x), initial_state=[h1, h2]
)
model = keras.Model([x, h1, h2], o, name="masked_initial_state")
randomize(model)
xi = rs.randn(2, 6, 3).astype("float32")
xi[0, 4:] = 0
save(model, "masked_initial_state", [xi, rs.randn(2, 4).astype("float32"), rs.randn(2, 4).astype("float32")])

# nmt: the attention encoder-decoder of the translation tutorials: token inputs through
# Embedding(mask_zero), an LSTM encoder's states into the LSTM decoder, Attention over the
# encoder sequence, Concatenate, TimeDistributed(Dense(softmax)); free sequence lengths
keras.utils.set_random_seed(8)
rs = np.random.RandomState(41)
enc_in = L.Input((None,), dtype="int32")
dec_in = L.Input((None,), dtype="int32")
enc_seq, h, c = L.LSTM(8, return_sequences=True, return_state=True)(
    L.Embedding(20, 6, mask_zero=True)(enc_in)
)
dec_seq = L.LSTM(8, return_sequences=True)(
    L.Embedding(20, 6, mask_zero=True)(dec_in), initial_state=[h, c]
)
ctx = L.Attention()([dec_seq, enc_seq])
out = L.TimeDistributed(L.Dense(20, activation="softmax"))(L.Concatenate()([dec_seq, ctx]))
model = keras.Model([enc_in, dec_in], out, name="nmt")
for layer in model.layers:
    ws = layer.get_weights()
    if ws:
        layer.set_weights([rs.uniform(-0.5, 0.5, w.shape).astype("float32") for w in ws])
ei = rs.randint(1, 20, (3, 7)).astype("int32")
ei[0, 5:] = 0
ei[2, 3:] = 0
di = rs.randint(1, 20, (3, 5)).astype("int32")
di[1, 3:] = 0
save(model, "nmt", [ei, di])

# mix7: a masked Bidirectional GRU encoder (dropout, recurrent_dropout: inference no-ops) whose
# concatenated states start a relu GRU decoder (unroll=True), then an LSTM without bias and
# with hard_sigmoid, SpatialDropout1D, Conv1D, Bidirectional(SimpleRNN, "ave"),
# GlobalMaxPooling1D
keras.utils.set_random_seed(12)
rs = np.random.RandomState(51)
x = L.Input((None, 4))
d = L.Input((None, 3))
o, fh, bh = L.Bidirectional(L.GRU(5, return_state=True, dropout=0.3, recurrent_dropout=0.2))(
    L.Masking(0.0)(x)
)
dec = L.GRU(10, return_sequences=True, activation="relu", unroll=True)(
    d, initial_state=L.Concatenate()([fh, bh])
)
s1 = L.LSTM(6, return_sequences=True, use_bias=False, recurrent_activation="hard_sigmoid")(dec)
cv = L.Conv1D(4, 3, padding="same")(L.SpatialDropout1D(0.3)(s1))
bi = L.Bidirectional(L.SimpleRNN(3, return_sequences=True), merge_mode="ave")(cv)
out = L.Dense(2, activation="softmax")(L.Concatenate()([L.GlobalMaxPooling1D()(bi), o]))
model = keras.Model([x, d], out, name="mix7")
for layer in model.layers:
    ws = layer.get_weights()
    if ws:
        layer.set_weights([rs.uniform(-0.6, 0.6, w.shape).astype("float32") for w in ws])
xi = rs.randn(3, 8, 4).astype("float32")
xi[1, 6:] = 0
save(model, "mix7", [xi, rs.randn(3, 5, 3).astype("float32")])
