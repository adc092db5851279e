#!/usr/bin/env python3
"""Checks that Keras 3 loads the functional models the crate's training path writes: for each
model the test `trained_graphs_are_written_back_as_keras_files` (tests/graph_training.rs) left
in the temporary directory, `keras.saving.load_model(...keras)` and the original model with
`load_weights(...weights.h5)` are run on the case's inputs, and every output is compared with
the trained network's own predictions (saved beside them by the test).

Run after the test: KERAS_BACKEND=tensorflow python scripts/check_saved_graph_training.py
(the zoo models are read from ../shared/golden/keras-zoo or $KERAS_ZOO_DIR).
"""
import json
import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data", "training")
ZOO = os.environ.get("KERAS_ZOO_DIR", os.path.join(HERE, "..", "..", "shared", "golden", "keras-zoo"))
MODELS = ["p_embedding_pooling", "p_embedding_gru", "p_encoder_decoder_states",
          "p_gru_encoder_decoder", "p_simplernn_autoencoder", "p_merge_layers",
          "p_conv_pool_norm", "p_attention_layers", "p_functional_masking_states",
          "p_masked_bigru_tagger", "graph_mix", "graph_reg",
          "graph_frozen", "graph_constraint", "graph_dot", "graph_logits",
          "graph_shared_bn", "graph_orthogonal",
          "graph_bidi_activity", "graph_mha", "graph_attn_dropout", "graph_conv_lstm",
          "graph_conv2d", "graph_ctc"]


def outputs(model, xs):
    y = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    return [np.asarray(v, dtype="float64") for v in (y if isinstance(y, (list, tuple)) else [y])]


tmp = tempfile.gettempdir()
ok = True
for m in MODELS:
    case = f"graph_grads_{m}_f32"
    meta = json.load(open(os.path.join(DATA, f"{case}.json")))
    src = meta["model"]
    original_path = os.path.join(ZOO, src[4:] + ".keras") if src.startswith("zoo:") else os.path.join(DATA, src)
    arrays = np.load(os.path.join(DATA, f"{case}.npz"))
    original = keras.saving.load_model(original_path)
    xs = []
    for k, spec in enumerate(original.inputs):
        x = arrays[f"x{k}"]
        xs.append(x.astype(spec.dtype))
    stem = os.path.join(tmp, f"lstm_wgpu_trained_graph_{m}")
    saved = keras.saving.load_model(stem + ".keras")
    original.load_weights(stem + ".weights.h5")
    want = [np.load(f"{stem}.pred{k}.npy").astype("float64") for k in range(len(saved.outputs))]
    d1 = max(float(np.abs(a - b).max()) for a, b in zip(outputs(saved, xs), want))
    d2 = max(float(np.abs(a - b).max()) for a, b in zip(outputs(original, xs), want))
    moved = max(float(np.abs(w1 - w0).max()) for w1, w0 in
                zip(saved.get_weights(), keras.saving.load_model(original_path).get_weights()))
    print(f"{m}: load_model vs crate {d1:.1e}, load_weights vs crate {d2:.1e}, "
          f"weights moved by up to {moved:.2f}")
    ok &= d1 <= 1e-5 and d2 <= 1e-5 and moved > 1e-3
sys.exit(0 if ok else 1)
