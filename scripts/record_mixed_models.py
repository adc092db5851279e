"""Two models mixing the graph layers with their less common options
(tests/data/keras/mix1.*, mix2.*), weights drawn uniformly so that every parameter matters.
mix1: Masking, LSTM and a backwards reset-before GRU on its mask, Maximum/Minimum of them
(Keras saves the merged masks as LogicalOr/ExpandDims/ZerosLike/Concatenate/Any op layers),
Concatenate along time (the masks concatenated), LayerNormalization(center=False),
BatchNormalization(scale=False), masked GlobalAveragePooling1D(keepdims), strided "same" and
dilated grouped Conv1D, AveragePooling1D/MaxPooling1D "same", ZeroPadding1D, Cropping1D,
UpSampling1D, GlobalMaxPooling1D, Dense, PReLU.
mix2: int32 tokens through Embedding; Masking, LSTM with states; Attention (concat scores,
scale, returned scores), Attention, AdditiveAttention(use_scale=False), Add, Dot(normalize),
Permute, RepeatVector, ReLU(max_value, negative_slope, threshold), LeakyReLU, ELU, Softmax.
Run with keras 3.15.1 (TensorFlow backend) in the output directory:

  cd tests/data/keras && python ../../../scripts/record_mixed_models.py
"""
import os, numpy as np
os.environ["KERAS_BACKEND"]="tensorflow"
import keras
from keras import layers as L
keras.utils.set_random_seed(5)
rs = np.random.RandomState(7)

def save(m, name, xs):
    m.save(f"{name}.keras")
    ys = m.predict(xs, verbose=0)
    if not isinstance(ys, list): ys = [ys]
    # one input/output: NAME.input.npy / NAME.expected.npy; several: NAME.input.K.npy, ...
    for k, x in enumerate(xs):
        np.save(f"{name}.input.npy" if len(xs) == 1 else f"{name}.input.{k}.npy", x)
    for k, y in enumerate(ys):
        np.save(f"{name}.expected.npy" if len(ys) == 1 else f"{name}.expected.{k}.npy", y)
    print(name, [y.shape for y in ys])

def randomize(m):
    for l in m.layers:
        ws = l.get_weights()
        if ws:
            l.set_weights([rs.uniform(-0.8, 0.8, w.shape).astype("float32") if "variance" not in v.path else rs.uniform(0.5, 1.5, w.shape).astype("float32") for w, v in zip(ws, l.weights)])

# 1: conv variants, pooling, padding, norm options, masks through merges
x = L.Input((11, 4))
m = L.Masking(0.0)(x)
c1 = L.Conv1D(5, 3, strides=2, padding="same", activation="tanh")(x)
c2 = L.Conv1D(4, 2, padding="valid", dilation_rate=3, groups=2, use_bias=False)(x)
p1 = L.AveragePooling1D(3, strides=2, padding="same")(c1)
p2 = L.MaxPooling1D(2, padding="same")(L.ZeroPadding1D((1, 2))(c2))
u = L.UpSampling1D(2)(L.Cropping1D((1, 0))(p1))
r = L.LSTM(6, return_sequences=True)(m)
r2 = L.GRU(6, return_sequences=True, reset_after=False, go_backwards=True)(m)
mx = L.Maximum()([r, r2])
mn = L.Minimum()([r, L.Activation("relu")(r2)])
cat = L.Concatenate(axis=1)([mx, mn])
ln = L.LayerNormalization(center=False)(cat)
bn = L.BatchNormalization(scale=False)(ln)
g1 = L.GlobalAveragePooling1D(keepdims=True)(bn)
g2 = L.GlobalMaxPooling1D()(u)
g3 = L.GlobalMaxPooling1D()(p2)
out = L.Concatenate()([L.Flatten()(g1), g2, g3])
out = L.PReLU()(L.Dense(3)(out))
model = keras.Model(x, out, name="mix1")
randomize(model)
xi = rs.randn(3, 11, 4).astype("float32"); xi[1, 8:] = 0; xi[2, :3] = 0
save(model, "mix1", [xi])

# 2: attention variants, dot, permute, repeat, relu options, embedding without mask_zero + masking
q = L.Input((5,), dtype="int32")
v = L.Input((7, 3))
e = L.Embedding(9, 3)(q)
vm = L.Masking(0.0)(v)
enc, h, c = L.LSTM(3, return_sequences=True, return_state=True)(vm)
a1, sc = L.Attention(use_scale=True, score_mode="concat")([e, enc], return_attention_scores=True, use_causal_mask=False)
a2 = L.Attention()([e, enc, vm], use_causal_mask=True) if False else L.Attention()([e, enc])
a3 = L.AdditiveAttention(use_scale=False)([e, enc])
s = L.Add()([a1, a2, a3])
d = L.Dot(axes=(2, 2), normalize=True)([s, e])
pm = L.Permute((2, 1))(d)
rv = L.RepeatVector(2)(L.Dense(4)(h))
rl = L.ReLU(max_value=0.6, negative_slope=0.1, threshold=0.2)(L.Flatten()(rv))
lk = L.LeakyReLU(negative_slope=0.2)(L.Flatten()(pm))
el = L.ELU()(L.Flatten()(sc))
sm = L.Softmax()(L.Dense(5)(L.Concatenate()([rl, lk, el, c])))
model2 = keras.Model([q, v], [sm, sc], name="mix2")
randomize(model2)
qi = rs.randint(0, 9, (4, 5)).astype("int32")
vi = rs.randn(4, 7, 3).astype("float32"); vi[0, 5:] = 0; vi[3, :] = 0
save(model2, "mix2", [qi, vi])

# mix4: a shared Embedding(mask_zero) and a shared LSTM called on two token inputs (the
# masks reach the layers as ConvertToTensor/NotEqual op layers), Attention over the two masked
# sequences, LayerNormalization, masked GlobalAveragePooling1D, Bidirectional(LSTM) states,
# Softmax, AveragePooling1D and Dot(axes=1)
rs = np.random.RandomState(21)
keras.utils.set_random_seed(4)
a = L.Input((8,), dtype="int32")
b = L.Input((6,), dtype="int32")
emb = L.Embedding(15, 4, mask_zero=True)
ea, eb = emb(a), emb(b)
shared = L.LSTM(5, return_sequences=True)
sa, sb = shared(ea), shared(eb)
gp = L.GlobalAveragePooling1D()(L.LayerNormalization()(L.Attention()([sa, sb])))
bo, h1, c1, h2, c2 = L.Bidirectional(L.LSTM(3, return_state=True))(sb)
st = L.Concatenate()([h1, c1, h2, c2, bo])
sm = L.Softmax()(L.Dense(4)(L.Concatenate()([gp, st])))
pooled = L.AveragePooling1D(2, strides=1)(sa)
out2 = L.Flatten()(L.Dot(axes=1)([pooled, pooled]))
model4 = keras.Model([a, b], [sm, out2], name="mix4")
for layer in model4.layers:
    ws = layer.get_weights()
    if ws:
        layer.set_weights([rs.uniform(-0.8, 0.8, w.shape).astype("float32") for w in ws])
ai = rs.randint(1, 15, (3, 8)).astype("int32")
ai[0, 5:] = 0
ai[1, :] = 0
ai[1, 0] = 2
bi_ = rs.randint(1, 15, (3, 6)).astype("int32")
bi_[2, 3:] = 0
save(model4, "mix4", [ai, bi_])

# mix5: masks through merges with unmasked inputs (Concatenate: all present; Add: none),
# TimeDistributed(Dense) and LayerNormalization (kept), ZeroPadding1D, Permute and Conv1D
# (dropped), into LSTM, GRU and SimpleRNN layers
rs = np.random.RandomState(31)
keras.utils.set_random_seed(6)
x = L.Input((7, 3))
y = L.Input((7, 2))
m = L.Masking(0.0)(x)
l1 = L.LSTM(4, return_sequences=True)(L.Concatenate()([m, y]))
l2 = L.GRU(4, return_sequences=True)(L.Add()([L.Dense(4)(m), L.Dense(4)(y)]))
td = L.TimeDistributed(L.Dense(4, activation="tanh"))(m)
l3 = L.SimpleRNN(4, return_sequences=True)(L.LayerNormalization()(td))
l4 = L.LSTM(3)(L.ZeroPadding1D(1)(m))
l5 = L.GRU(3)(L.Permute((1, 2))(m))
l6 = L.LSTM(3)(L.Conv1D(3, 2, padding="same")(m))
s = L.Concatenate()([l1, l2, l3])
out = L.Concatenate()([L.GlobalAveragePooling1D()(s), l4, l5, l6])
model5 = keras.Model([x, y], out, name="mix5")
for layer in model5.layers:
    ws = layer.get_weights()
    if ws:
        layer.set_weights([rs.uniform(-0.8, 0.8, w.shape).astype("float32") for w in ws])
xi = rs.randn(3, 7, 3).astype("float32")
xi[0, 5:] = 0
xi[1, :2] = 0
xi[2, 3] = 0
save(model5, "mix5", [xi, rs.randn(3, 7, 2).astype("float32")])
