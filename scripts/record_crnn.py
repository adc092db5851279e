#!/usr/bin/env python3
"""Writes tests/data/crnn/: Keras 3.15.1 convolutional-recurrent models (the handwriting /
captcha OCR example's CRNN, a DeepSpeech2-like speech model, Conv2D and pooling options,
TimeDistributed(Conv2D) into an LSTM, ZeroPadding2D/Cropping2D/UpSampling2D), inputs,
Keras's predictions and, for the OCR model, keras.ops.ctc_decode's greedy and beam-search
labels of them. Weights are seeded
uniform(-0.6, 0.6) (moving variances uniform(0.5, 1.5)).
Run: KERAS_BACKEND=tensorflow python scripts/record_crnn.py [OUT_DIR]
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keras_recording  # noqa: E402
from keras import layers

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "crnn")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(23)



def randomize(model):
    keras_recording.randomize(model, rng)


def save(name, model, inputs):
    return keras_recording.save(OUT, name, model, inputs)


# 1. The OCR example's CRNN (width x height x 1 images; two conv blocks; the feature map
# reshaped to width/4 timesteps; two Bidirectional LSTMs; softmax over the characters + blank).
img = keras.Input((32, 16, 1), name="image")
h = layers.Conv2D(8, (3, 3), activation="relu", kernel_initializer="he_normal",
                  padding="same", name="Conv1")(img)
h = layers.MaxPooling2D((2, 2), name="pool1")(h)
h = layers.Conv2D(8, (3, 3), activation="relu", padding="same", name="Conv2")(h)
h = layers.MaxPooling2D((2, 2), name="pool2")(h)
h = layers.Reshape((8, 4 * 8), name="reshape")(h)
h = layers.Dense(16, activation="relu", name="dense1")(h)
h = layers.Dropout(0.2)(h)
h = layers.Bidirectional(layers.LSTM(8, return_sequences=True, dropout=0.25))(h)
h = layers.Bidirectional(layers.LSTM(6, return_sequences=True, dropout=0.25))(h)
out = layers.Dense(11, activation="softmax", name="dense2")(h)
model = keras.Model(img, out, name="ocr_model_v1")
randomize(model)
x = rng.uniform(0, 1, (3, 32, 16, 1)).astype("float32")
(probs,) = save("ocr", model, [x])
lengths = np.full((3,), probs.shape[1], dtype="int32")
greedy, _ = keras.ops.ctc_decode(probs, lengths, strategy="greedy")
beam, _ = keras.ops.ctc_decode(probs, lengths, strategy="beam_search", beam_width=4, top_paths=1)
np.save(os.path.join(OUT, "ocr.greedy.npy"), np.asarray(greedy[0]).astype("int64"))
np.save(os.path.join(OUT, "ocr.beam.npy"), np.asarray(beam[0]).astype("int64"))

# 2. DeepSpeech2-like: a spectrogram [T, F] of any length, Conv2D with strides over time and
# frequency and no bias, BatchNormalization and ReLU on 4-D, a Reshape with -1, a
# Bidirectional GRU, Dense layers.
spec = keras.Input((None, 24), name="input")
h = layers.Reshape((-1, 24, 1), name="expand_dim")(spec)
h = layers.Conv2D(4, [5, 7], strides=[2, 2], padding="same", use_bias=False, name="conv_1")(h)
h = layers.BatchNormalization(name="conv_1_bn")(h)
h = layers.ReLU(name="conv_1_relu")(h)
h = layers.Conv2D(4, [3, 5], strides=[1, 2], padding="same", use_bias=False, name="conv_2")(h)
h = layers.BatchNormalization(name="conv_2_bn")(h)
h = layers.ReLU(name="conv_2_relu")(h)
h = layers.Reshape((-1, h.shape[-2] * h.shape[-1]))(h)
h = layers.Bidirectional(layers.GRU(6, return_sequences=True, reset_after=True), name="bidirectional_1")(h)
h = layers.Dropout(0.5)(h)
h = layers.Dense(12, name="dense_1")(h)
h = layers.ReLU(name="dense_1_relu")(h)
out = layers.Dense(9, activation="softmax")(h)
model = keras.Model(spec, out, name="DeepSpeech_2")
randomize(model)
save("speech", model, [rng.uniform(-1, 1, (2, 13, 24)).astype("float32")])

# 3. Conv2D and pooling options side by side: valid/same padding, strides, dilation, groups,
# no bias, 1x1 kernels; max/average pooling (same padding leaves padding out of the mean);
# global pools; BatchNormalization without center.
inp = keras.Input((9, 11, 4), name="x")
outs = [
    layers.Conv2D(6, (3, 2), strides=(2, 1), groups=2, activation="tanh", name="grouped")(inp),
    layers.Conv2D(5, (2, 3), dilation_rate=(2, 1), padding="same", use_bias=False, name="dilated")(inp),
    layers.Conv2D(3, 1, strides=3, activation="relu", name="pointwise")(inp),
    layers.Conv2D(2, (4, 4), strides=(3, 2), padding="same", activation="sigmoid", name="strided_same")(inp),
    layers.MaxPooling2D((3, 2), strides=(2, 3), padding="same", name="max_same")(inp),
    layers.AveragePooling2D((2, 3), strides=(1, 2), padding="same", name="avg_same")(inp),
    layers.AveragePooling2D(2, name="avg_valid")(inp),
    layers.MaxPooling2D((2, 4), strides=1, name="max_valid")(inp),
    layers.GlobalAveragePooling2D(name="gap")(inp),
    layers.GlobalMaxPooling2D(keepdims=True, name="gmp")(inp),
    layers.BatchNormalization(center=False, epsilon=0.01, name="bn")(inp),
]
model = keras.Model(inp, outs)
randomize(model)
save("conv_options", model, [rng.uniform(-1, 1, (2, 9, 11, 4)).astype("float32")])

# 4. TimeDistributed(Conv2D) over a sequence of frames into an LSTM.
frames = keras.Input((5, 8, 6, 2), name="frames")
h = layers.TimeDistributed(layers.Conv2D(4, 3, padding="same", activation="relu"), name="td_conv")(frames)
h = layers.TimeDistributed(layers.MaxPooling2D(2), name="td_pool")(h)
h = layers.TimeDistributed(layers.Flatten(), name="td_flat")(h)
h = layers.LSTM(7, name="lstm")(h)
out = layers.Dense(3, name="head")(h)
model = keras.Model(frames, out)
randomize(model)
save("td_conv", model, [rng.uniform(-1, 1, (2, 5, 8, 6, 2)).astype("float32")])

# 5. ZeroPadding2D, Cropping2D, UpSampling2D (nearest), each config form, alone and around
# a Conv2D.
inp = keras.Input((7, 9, 3), name="x")
c = layers.ZeroPadding2D(((1, 2), (0, 3)), name="pad_pairs")(inp)
c = layers.Conv2D(4, 3, activation="tanh", name="conv")(c)
c = layers.UpSampling2D((2, 3), name="up")(c)
c = layers.Cropping2D(((1, 0), (2, 1)), name="crop_pairs")(c)
outs = [
    c,
    layers.ZeroPadding2D(1, name="pad_int")(inp),
    layers.ZeroPadding2D((2, 1), name="pad_axes")(inp),
    layers.Cropping2D((1, 2), name="crop_axes")(inp),
    layers.UpSampling2D(2, name="up_int")(inp),
]
model = keras.Model(inp, outs)
randomize(model)
save("padding2d", model, [rng.uniform(-1, 1, (2, 7, 9, 3)).astype("float32")])
