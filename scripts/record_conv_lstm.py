#!/usr/bin/env python3
"""Writes tests/data/conv_lstm/: Keras 3.15.1 models with ConvLSTM2D and ConvLSTM1D
(padding, strides, dilation, return_sequences/return_state, go_backwards, activations, no
bias, a timestep mask passed as mask=, initial_state from another input, stacked ConvLSTM2D
with BatchNormalization as in Keras's next-frame prediction example), inputs and Keras's
predictions. Weights are seeded uniform(-0.6, 0.6) (moving variances uniform(0.5, 1.5)).
Run: KERAS_BACKEND=tensorflow python scripts/record_conv_lstm.py [OUT_DIR]
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
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "conv_lstm")
os.makedirs(OUT, exist_ok=True)
rng = np.random.RandomState(29)



def randomize(model):
    keras_recording.randomize(model, rng)


def save(name, model, inputs):
    return keras_recording.save(OUT, name, model, inputs)


frames = rng.uniform(-1, 1, (2, 5, 7, 6, 3)).astype("float32")

# 1. ConvLSTM2D, same padding, the whole sequence.
inp = keras.Input((None, 7, 6, 3), name="frames")
out = layers.ConvLSTM2D(4, (3, 3), padding="same", return_sequences=True, name="convlstm")(inp)
model = keras.Model(inp, out)
randomize(model)
save("seq_same", model, [frames])

# 2. Options: valid padding, strides, an even kernel, go_backwards, states returned,
# relu / hard_sigmoid, no bias.
inp = keras.Input((5, 7, 6, 3), name="frames")
outs = layers.ConvLSTM2D(3, (2, 3), strides=(2, 1), padding="valid", go_backwards=True,
                         return_sequences=True, return_state=True, activation="relu",
                         recurrent_activation="hard_sigmoid", use_bias=False,
                         name="options")(inp)
model = keras.Model(inp, outs)
randomize(model)
save("options", model, [frames])

# 3. ConvLSTM1D with dilation and same padding (an even kernel), the last output; and a
# masked sequence (the mask as mask=, from a boolean input) with return_sequences.
seq = keras.Input((6, 9, 2), name="seq")
m = keras.Input((6,), dtype="bool", name="mask")
a = layers.ConvLSTM1D(5, 4, dilation_rate=2, padding="same", name="c1d")(seq)
b = layers.ConvLSTM1D(2, 3, return_sequences=True, name="masked")(seq, mask=m)
model = keras.Model([seq, m], [a, b])
randomize(model)
x1 = rng.uniform(-1, 1, (3, 6, 9, 2)).astype("float32")
mask = np.ones((3, 6), dtype=bool)
mask[1, 4:] = False
mask[2, 0] = False
mask[2, 3] = False
save("conv1d_masked", model, [x1, mask])

# 4. Keras's next-frame prediction shape: stacked ConvLSTM2D with BatchNormalization, the
# last one returning the last frame, a Conv2D head; and initial_state from the first
# layer's states into a second ConvLSTM2D.
inp = keras.Input((None, 8, 8, 1), name="video")
h = layers.ConvLSTM2D(4, (5, 5), padding="same", return_sequences=True, name="cl1")(inp)
h = layers.BatchNormalization(name="bn1")(h)
h, hs, cs = layers.ConvLSTM2D(4, (3, 3), padding="same", return_sequences=True,
                              return_state=True, name="cl2")(h)
h = layers.BatchNormalization(name="bn2")(h)
h = layers.ConvLSTM2D(4, (1, 1), padding="same", name="cl3")(h, initial_state=[hs, cs])
out = layers.Conv2D(1, (3, 3), activation="sigmoid", padding="same", name="head")(h)
model = keras.Model(inp, out)
randomize(model)
save("next_frame", model, [rng.uniform(0, 1, (2, 4, 8, 8, 1)).astype("float32")])

# 5. Bidirectional ConvLSTM (as in BConvLSTM U-Nets): ConvLSTM2D over the whole sequence
# with the two directions concatenated, under a timestep mask; ConvLSTM1D returning the
# states with the directions summed and initial states for both; strided ConvLSTM2D with
# merge_mode None, "mul" and "ave"; a backward layer given apart (its own filters'
# activations).
frames = rng.uniform(-1, 1, (2, 5, 6, 5, 2)).astype("float32")
inp = keras.Input((5, 6, 5, 2), name="frames")
m = keras.Input((5,), dtype="bool", name="mask")
cat = layers.Bidirectional(layers.ConvLSTM2D(3, (3, 3), padding="same", return_sequences=True),
                           name="bi_concat")(inp, mask=m)
none = layers.Bidirectional(layers.ConvLSTM2D(2, (2, 2), strides=(2, 2), return_sequences=True),
                            merge_mode=None, name="bi_none")(inp)
mul = layers.Bidirectional(layers.ConvLSTM2D(2, (3, 2)), merge_mode="mul", name="bi_mul")(inp)
ave = layers.Bidirectional(
    layers.ConvLSTM2D(2, (1, 3), padding="same", return_sequences=True, activation="relu"),
    backward_layer=layers.ConvLSTM2D(2, (1, 3), padding="same", return_sequences=True,
                                     go_backwards=True, recurrent_activation="hard_sigmoid"),
    merge_mode="ave", name="bi_ave")(inp)
model = keras.Model([inp, m], [cat, none[0], none[1], mul, ave])
randomize(model)
mask = np.ones((2, 5), dtype=bool)
mask[0, 3:] = False
mask[1, 1] = False
save("bidirectional", model, [frames, mask])

seq = keras.Input((6, 7, 2), name="seq")
h0 = keras.Input((7, 3), name="h0")
c0 = keras.Input((7, 3), name="c0")
outs = layers.Bidirectional(layers.ConvLSTM1D(3, 3, padding="same", return_state=True),
                            merge_mode="sum", name="bi_states")(
    seq, initial_state=[h0, c0, c0, h0])
model = keras.Model([seq, h0, c0], outs)
randomize(model)
save("bidirectional_1d", model, [rng.uniform(-1, 1, (3, 6, 7, 2)).astype("float32"),
                                 rng.uniform(-1, 1, (3, 7, 3)).astype("float32"),
                                 rng.uniform(-1, 1, (3, 7, 3)).astype("float32")])
