#!/usr/bin/env python3
"""Records `keras.ops.ctc_decode` (Keras 3.15.1, TensorFlow 2.21 backend) for tests/ctc_decode.rs.

Writes into OUT_DIR (default tests/data/ctc/):

  inputs.npy   every input set's float32 values, flattened and concatenated (exact bits)
  cases.json   {"keras": ..., "tensorflow": ...,
                "inputs":  [{name, shape [B, T, C], offset, sequence_lengths, kind}],
                "decodes": [{input, strategy, merge_repeated, beam_width, top_paths,
                             mask_index, decoded, scores [B][top_paths]}],
                "errors":  [{input, sequence_lengths, strategy, ..., error: "Type: message"}]}

  `decoded` is [top_paths][B] label lists: Keras's -1 padded [top_paths, B, T] array with
  the padding cut off (the script checks each row is labels followed only by -1s). A NaN or
  infinite score is written as the string "nan", "inf" or "-inf".

Input kinds (all seeded numpy, so a rerun writes the same files):
  softmax   softmax of N(0, s) logits: what a CRNN/speech model's last layer gives
  peaked    near-one-hot rows along a random path with repeats and blanks (blank = the
            class given), so `merge_repeated` and blank handling matter
  logprob   log of a softmax (the "logits" Keras's docstring asks for)
  logits    raw N(0, 2) values
  onehot    exact 0/1 rows (ties everywhere)
  uniform   all classes equal (ties)
  quantized softmax rounded to one decimal (ties between classes and between beams)
  logonehot log of exact one-hot rows: -inf entries
  nan       a NaN in a row (greedy only: TF's greedy decoder has a defined result for it)

Keras passes `inputs` to TensorFlow as they are (no log, no softmax): the greedy decoder
takes the arg-max of the raw values and scores -sum(max); the beam search decoder
log-softmaxes each row itself (ctc_beam_search.h) after Keras moved the `mask_index` column
to the end.

Run: KERAS_BACKEND=tensorflow /work/venv/bin/python scripts/record_ctc_cases.py [OUT_DIR]
"""
import json
import math
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import keras
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "tests", "data", "ctc")


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def make_input(rng, kind, b, t, c, blank=0):
    if kind == "softmax":
        scale = rng.uniform(0.5, 4.0)
        return softmax(rng.normal(0.0, scale, (b, t, c)))
    if kind in ("peaked", "logpeaked"):
        x = np.empty((b, t, c))
        for i in range(b):
            cls = blank
            for j in range(t):
                r = rng.random()
                if r < 0.35:
                    cls = blank  # a blank
                elif r < 0.6:
                    pass  # repeat the previous class (or blank)
                else:
                    cls = int(rng.integers(0, c))
                peak = rng.uniform(0.55, 0.99)
                row = rng.dirichlet(np.ones(c)) * (1.0 - peak)
                row[cls] += peak
                x[i, j] = row
        return np.log(x) if kind == "logpeaked" else x
    if kind == "logprob":
        return np.log(softmax(rng.normal(0.0, 2.0, (b, t, c))))
    if kind == "logits":
        return rng.normal(0.0, 2.0, (b, t, c))
    if kind == "onehot":
        x = np.zeros((b, t, c))
        idx = rng.integers(0, c, (b, t))
        for i in range(b):
            for j in range(t):
                x[i, j, idx[i, j]] = 1.0
        return x
    if kind == "uniform":
        return np.full((b, t, c), 1.0 / c)
    if kind == "quantized":
        return np.round(softmax(rng.normal(0.0, 1.5, (b, t, c))), 1)
    if kind == "logonehot":
        with np.errstate(divide="ignore"):
            return np.log(make_input(rng, "onehot", b, t, c))
    if kind == "nan":
        x = softmax(rng.normal(0.0, 1.0, (b, t, c)))
        x[0, 1, 0] = np.nan  # arg-max of that row: class 0 with a NaN score (TF's RowMax)
        x[0, 2, c - 1] = np.nan  # ignored: NaN is never greater than the running max
        return x
    raise ValueError(kind)


# (name, kind, B, T, C, sequence_lengths, blank of a peaked path)
INPUTS = [
    ("softmax_b1_t1_c2", "softmax", 1, 1, 2, [1], 0),
    ("softmax_b1_t5_c3", "softmax", 1, 5, 3, [5], 0),
    ("softmax_b2_t10_c5", "softmax", 2, 10, 5, [10, 7], 0),
    ("softmax_b3_t30_c12", "softmax", 3, 30, 12, [30, 0, 17], 0),
    ("softmax_b4_t12_c6", "softmax", 4, 12, 6, [12, 1, 5, 12], 0),
    ("softmax_b4_t30_c2", "softmax", 4, 30, 2, [30, 29, 3, 16], 0),
    ("softmax_b2_t8_c12", "softmax", 2, 8, 12, [8, 8], 0),
    ("peaked_b2_t20_c5_blank0", "peaked", 2, 20, 5, [20, 15], 0),
    ("peaked_b3_t25_c8_blanklast", "peaked", 3, 25, 8, [25, 25, 11], 7),
    ("peaked_b2_t16_c6_blankmid", "peaked", 2, 16, 6, [16, 9], 2),
    ("logpeaked_b2_t18_c7_blank0", "logpeaked", 2, 18, 7, [18, 12], 0),
    ("logprob_b2_t15_c6", "logprob", 2, 15, 6, [15, 10], 0),
    ("logits_b2_t12_c4", "logits", 2, 12, 4, [12, 6], 0),
    ("onehot_b2_t10_c4", "onehot", 2, 10, 4, [10, 8], 0),
    ("uniform_b1_t6_c3", "uniform", 1, 6, 3, [6], 0),
    ("quantized_b3_t14_c5", "quantized", 3, 14, 5, [14, 14, 9], 0),
    ("uniform_b2_t5_c12", "uniform", 2, 5, 12, [5, 3], 0),
    ("quantized_b2_t20_c10", "quantized", 2, 20, 10, [20, 13], 0),
    ("onehot_b2_t12_c9", "onehot", 2, 12, 9, [12, 7], 0),
    ("logonehot_b1_t8_c4", "logonehot", 1, 8, 4, [8], 0),
    ("logpeaked_b1_t2000_c4_long", "logpeaked", 1, 2000, 4, [2000], 0),
    ("nan_b1_t3_c3", "nan", 1, 3, 3, [3], 0),
]


def decode_configs(c):
    """The decodes run on an input set with C classes: (strategy, merge, width, top, mask)."""
    mid = c // 2
    configs = [
        ("greedy", True, 100, 1, 0),
        ("greedy", False, 100, 1, 0),
        ("greedy", True, 100, 1, c - 1),
        ("beam_search", True, 1, 1, 0),
        ("beam_search", True, 3, 2, 0),
        ("beam_search", True, 3, 3, c - 1),
        ("beam_search", True, 16, 2, mid),
        ("beam_search", True, 100, 1, 0),
        ("beam_search", True, 100, 3, c - 1),
    ]
    if c > 2:
        configs.insert(3, ("greedy", False, 100, 1, mid))
    return configs


def run(x, seq, strategy, merge, width, top, mask):
    decoded, scores = keras.ops.ctc_decode(
        x,
        np.asarray(seq, dtype=np.int32),
        strategy=strategy,
        beam_width=width,
        top_paths=top,
        merge_repeated=merge,
        mask_index=mask,
    )
    return np.asarray(decoded), np.asarray(scores)


def unpad(dense):
    """[top_paths][B] label lists from Keras's -1 padded [top_paths, B, T] array, checking
    that it is exactly the labels followed by -1s (so the test may re-pad them)."""
    out = []
    for path in dense:
        rows = []
        for row in path:
            n = int(np.sum(row >= 0))
            assert (row[:n] >= 0).all() and (row[n:] == -1).all(), row
            rows.append([int(v) for v in row[:n]])
        out.append(rows)
    return out


def message(e):
    """The exception's type and first line, without TF's `{{function_node ...}} ` prefix."""
    text = str(e).splitlines()[0]
    if text.startswith("{{") and "}} " in text:
        text = text.split("}} ", 1)[1]
    return f"{type(e).__name__}: {text[:200]}"


def score_json(v):
    """A score as JSON: a number, or "nan", "inf", "-inf" (strict JSON has none of these)."""
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20260315)
    flat = []
    offset = 0
    inputs, decodes, errors = [], [], []
    arrays = {}
    for name, kind, b, t, c, seq, blank in INPUTS:
        x = make_input(rng, kind, b, t, c, blank).astype(np.float32)
        arrays[name] = (x, seq)
        inputs.append({"name": name, "kind": kind, "shape": [b, t, c], "offset": offset,
                       "sequence_lengths": seq})
        flat.append(x.ravel())
        offset += x.size
        configs = decode_configs(c)
        if kind == "nan":
            configs = [cfg for cfg in configs if cfg[0] == "greedy"]
        if name.endswith("_long"):
            configs = [cfg for cfg in configs if cfg[4] == 0 or cfg[0] == "greedy"] + [
                ("beam_search", True, 100, 3, 0)]
        for strategy, merge, width, top, mask in configs:
            entry = {"input": name, "strategy": strategy, "merge_repeated": merge,
                     "beam_width": width, "top_paths": top, "mask_index": mask}
            try:
                d, s = run(x, seq, strategy, merge, width, top, mask)
            except Exception as e:  # Keras/TF refused: the Rust side must refuse too
                entry["sequence_lengths"] = seq
                entry["error"] = message(e)
                errors.append(entry)
                continue
            assert d.shape == (top if strategy == "beam_search" else 1, b, t), d.shape
            entry["decoded"] = unpad(d)
            entry["scores"] = [[score_json(v) for v in row] for row in s]
            decodes.append(entry)

    # Calls Keras/TF refuse, on small inputs recorded above.
    x3, _ = arrays["softmax_b1_t5_c3"]
    x2, _ = arrays["softmax_b2_t10_c5"]
    refused = [
        ("softmax_b1_t5_c3", [6], "greedy", True, 100, 1, 0),  # length > T
        ("softmax_b1_t5_c3", [6], "beam_search", True, 3, 1, 0),
        ("softmax_b2_t10_c5", [10], "greedy", True, 100, 1, 0),  # len(lengths) != B
        ("softmax_b2_t10_c5", [10, 7, 1], "beam_search", True, 3, 1, 0),
        ("softmax_b1_t5_c3", [5], "beam_search", True, 0, 1, 0),  # beam_width 0
        ("softmax_b1_t5_c3", [5], "beam_search", True, 3, 0, 0),  # top_paths 0
        ("softmax_b1_t5_c3", [5], "beam_search", True, 2, 3, 0),  # top_paths > beam_width
        ("softmax_b1_t5_c3", [5], "greedy", True, 100, 1, 3),  # mask_index == C
        ("softmax_b1_t5_c3", [0], "beam_search", True, 3, 2, 0),  # 1 prefix < 2 paths
        ("softmax_b1_t1_c2", [1], "beam_search", True, 10, 3, 0),  # 2 prefixes < 3 paths
    ]
    for name, seq, strategy, merge, width, top, mask in refused:
        x, _ = arrays[name]
        entry = {"input": name, "sequence_lengths": seq, "strategy": strategy,
                 "merge_repeated": merge, "beam_width": width, "top_paths": top,
                 "mask_index": mask}
        try:
            run(x, seq, strategy, merge, width, top, mask)
            raise SystemExit(f"Keras accepted {entry}")
        except SystemExit:
            raise
        except Exception as e:
            entry["error"] = message(e)
        errors.append(entry)
    # An input with no time steps (T = 0): Keras/TF refuse it ("inputs must not be empty").
    try:
        run(np.zeros((1, 0, 3), np.float32), [0], "greedy", True, 100, 1, 0)
        raise SystemExit("Keras accepted T = 0")
    except SystemExit:
        raise
    except Exception as e:
        errors.append({"input": "(1, 0, 3) zeros", "sequence_lengths": [0], "strategy": "greedy",
                       "merge_repeated": True, "beam_width": 100, "top_paths": 1,
                       "mask_index": 0,
                       "error": message(e)})
    del x2, x3

    np.save(os.path.join(out_dir, "inputs.npy"), np.concatenate(flat).astype(np.float32))
    doc = {"keras": keras.__version__, "tensorflow": tf.__version__,
           "backend": keras.backend.backend(), "inputs": inputs, "decodes": decodes,
           "errors": errors}
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
    print(f"{len(inputs)} input sets, {len(decodes)} decodes, {len(errors)} refused calls "
          f"-> {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT)
