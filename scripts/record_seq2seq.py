#!/usr/bin/env python3
"""Writes tests/data/seq2seq/: the inference models of Keras's character-level seq2seq
example (lstm_seq2seq: an LSTM encoder whose final states start an LSTM decoder over one-hot
characters; encoder_model and decoder_model built from the trained model's layers) and a
word-level variant (Embedding -> GRU encoder, Embedding -> GRU decoder), each with Keras
3.15.1 seeded weights, and the tokens of the example's Python decoding loop on recorded
inputs: the encoder's states, then the decoder called one step at a time on the last token
(one-hot or id) and the states it returned, the next token the argmax (or a tempered draw
with recorded uniforms, as scripts/record_generation.py draws), until the stop token or the
maximum length. Run: KERAS_BACKEND=tensorflow python scripts/record_seq2seq.py [OUT_DIR]
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
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "seq2seq")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(31)


def randomize(model, scale):
    for layer in model.layers:
        w = layer.get_weights()
        if w:
            layer.set_weights([rng.uniform(-scale, scale, a.shape).astype("float32") for a in w])


def pick(p, temperature, u):
    p = np.asarray(p, dtype="float64")
    if temperature == 0:
        return int(np.argmax(p))
    p = p ** (1.0 / temperature)
    p = p / p.sum()
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u, side="left"), len(p) - 1))


# 1. Character level (the example's code, smaller sizes).
ENC_TOKENS, DEC_TOKENS, LATENT = 11, 13, 16
encoder_inputs = keras.Input(shape=(None, ENC_TOKENS))
encoder = keras.layers.LSTM(LATENT, return_state=True)
encoder_outputs, state_h, state_c = encoder(encoder_inputs)
encoder_states = [state_h, state_c]
decoder_inputs = keras.Input(shape=(None, DEC_TOKENS))
decoder_lstm = keras.layers.LSTM(LATENT, return_sequences=True, return_state=True)
decoder_outputs, _, _ = decoder_lstm(decoder_inputs, initial_state=encoder_states)
decoder_dense = keras.layers.Dense(DEC_TOKENS, activation="softmax")
decoder_outputs = decoder_dense(decoder_outputs)
model = keras.Model([encoder_inputs, decoder_inputs], decoder_outputs)
randomize(model, 1.5)
encoder_model = keras.Model(encoder_inputs, encoder_states)
decoder_state_input_h = keras.Input(shape=(LATENT,))
decoder_state_input_c = keras.Input(shape=(LATENT,))
decoder_states_inputs = [decoder_state_input_h, decoder_state_input_c]
decoder_outputs, state_h, state_c = decoder_lstm(decoder_inputs, initial_state=decoder_states_inputs)
decoder_outputs = decoder_dense(decoder_outputs)
decoder_model = keras.Model([decoder_inputs] + decoder_states_inputs,
                            [decoder_outputs, state_h, state_c])
encoder_model.save(os.path.join(OUT, "char_encoder.keras"))
decoder_model.save(os.path.join(OUT, "char_decoder.keras"))

# 2. Word level: Embedding -> GRU (one state) on both sides, token ids.
SRC_VOCAB, TGT_VOCAB = 17, 19
src = keras.Input(shape=(None,), dtype="int32")
e = layers.Embedding(SRC_VOCAB, 8)(src)
_, enc_state = layers.GRU(12, return_state=True)(e)
enc_word = keras.Model(src, enc_state)
randomize(enc_word, 1.0)
tgt = keras.Input(shape=(None,), dtype="int32")
st = keras.Input(shape=(12,))
d = layers.Embedding(TGT_VOCAB, 8)(tgt)
d, dec_state = layers.GRU(12, return_sequences=True, return_state=True)(d, initial_state=st)
d = layers.Dense(TGT_VOCAB, activation="softmax")(d)
dec_word = keras.Model([tgt, st], [d, dec_state])
randomize(dec_word, 1.0)
enc_word.save(os.path.join(OUT, "word_encoder.keras"))
dec_word.save(os.path.join(OUT, "word_decoder.keras"))

cases = []
gaps = []


def loop(enc, dec, x, start, stop, max_len, one_hot, vocab, temperature, uniforms):
    states = enc.predict(x, verbose=0)
    states = states if isinstance(states, list) else [states]
    tok, out = start, []
    for k in range(max_len):
        if one_hot:
            target = np.zeros((1, 1, vocab), dtype="float32")
            target[0, 0, tok] = 1.0
        else:
            target = np.array([[tok]], dtype="int32")
        res = dec.predict([target] + states, verbose=0)
        probs, states = res[0][0, -1], list(res[1:])
        top2 = np.sort(probs)[-2:]
        gaps.append(float(top2[1] - top2[0]))
        tok = pick(probs, temperature, uniforms[k] if uniforms else 0.0)
        out.append(tok)
        if tok == stop:
            break
    return out


for k in range(3):
    length = 4 + k * 3
    x = np.zeros((1, length, ENC_TOKENS), dtype="float32")
    x[0, np.arange(length), rng.randint(0, ENC_TOKENS, length)] = 1.0
    name = f"char_{k}"
    np.save(os.path.join(OUT, f"{name}.input.npy"), x)
    temperature = [0.0, 0.0, 0.8][k]
    uniforms = [float(u) for u in rng.random_sample(30)] if temperature else []
    tokens = loop(encoder_model, decoder_model, x, 1, 12, 30, True, DEC_TOKENS, temperature, uniforms)
    cases.append({"name": name, "models": "char", "start": 1, "stop": 12, "max_len": 30,
                  "temperature": temperature, "uniforms": uniforms, "tokens": tokens})
for k in range(2):
    length = 5 + 2 * k
    x = rng.randint(1, SRC_VOCAB, (1, length)).astype("int32")
    name = f"word_{k}"
    np.save(os.path.join(OUT, f"{name}.input.npy"), x.astype("int64"))
    tokens = loop(enc_word, dec_word, x, 1, 0, 25, False, TGT_VOCAB, 0.0, [])
    cases.append({"name": name, "models": "word", "start": 1, "stop": 0, "max_len": 25,
                  "temperature": 0.0, "uniforms": [], "tokens": tokens})
with open(os.path.join(OUT, "loops.json"), "w") as f:
    json.dump({"cases": cases}, f, indent=1)
for c in cases:
    print(c["name"], c["tokens"])
print("smallest top-2 probability gap of a greedy step:", min(gaps))
