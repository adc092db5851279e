#!/usr/bin/env python3
"""Writes tests/data/hdf5/*.h5: HDF5 files as h5py writes them with other settings than
Keras's defaults (libver="latest" = superblock v3 and v2 object headers; chunked gzip and
shuffle datasets), with float16, bfloat16 (a 2-byte float with an 8-bit exponent, marked
dtype="bfloat16" as Keras marks it), float32, big-endian float32 and float64 datasets, and
string attributes (variable-length and fixed, scalar and arrays), plus expected.json with
every value as h5py reads it (bfloat16 widened to float32).

Run: python scripts/record_hdf5_cases.py tests/data/hdf5   (needs h5py, numpy)
"""
import json
import sys

import h5py
import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/hdf5"
rng = np.random.default_rng(0)
expected = {}


def body(f, name, gz):
    exp = {"datasets": {}, "attributes": {}}
    f.attrs["weight_names"] = np.array(["dense/kernel:0", "dense/bias:0"], dtype=h5py.string_dtype())
    f.attrs["model_config"] = '{"class_name": "Sequential", "config": {"n": "\u00e9"}}'
    f.attrs["layer_names"] = np.array([b"lstm", b"dense_1"])
    f.attrs["backend"] = np.bytes_(b"tensorflow")
    exp["attributes"] = {"weight_names": ["dense/kernel:0", "dense/bias:0"],
                         "model_config": ['{"class_name": "Sequential", "config": {"n": "\u00e9"}}'],
                         "layer_names": ["lstm", "dense_1"], "backend": ["tensorflow"]}

    def put(path, data, **kw):
        f.create_dataset(path, data=data, **kw)
        exp["datasets"][path] = {"shape": list(np.shape(data)),
                                 "values": [float(v) for v in np.asarray(data, dtype=np.float64).ravel()]}

    put("a/b/c/f32", rng.standard_normal((3, 4)).astype("f4"))
    put("a/b/c/f16", rng.standard_normal((5,)).astype("f2"))
    put("a/b/c/f64", rng.standard_normal((2, 3)).astype("f8"))
    put("f32_be", rng.standard_normal((4,)).astype(">f4"))
    if gz:
        put("gz/f32", rng.standard_normal((50, 33)).astype("f4"), chunks=(16, 8),
            compression="gzip", compression_opts=4)
        put("gz/f32_shuffle", rng.standard_normal((100,)).astype("f4"), chunks=(30,),
            compression="gzip", shuffle=True)
    # bfloat16: IEEE single's layout cut to 16 bits (8-bit exponent, 7-bit mantissa)
    t = h5py.h5t.IEEE_F32LE.copy()
    t.set_fields(15, 7, 8, 0, 7)
    t.set_offset(16)
    t.set_precision(16)
    t.set_offset(0)
    t.set_size(2)
    t.set_ebias(127)
    v = rng.standard_normal((6,)).astype("f4")
    raw = (v.view("u4") >> 16).astype("u2")
    ds = h5py.h5d.create(f.id, b"bf16", t, h5py.h5s.create_simple((6,)))
    ds.write(h5py.h5s.ALL, h5py.h5s.ALL, raw, mtype=t)
    f["bf16"].attrs["dtype"] = "bfloat16"
    widened = (raw.astype("u4") << 16).view("f4")
    exp["datasets"]["bf16"] = {"shape": [6], "values": [float(x) for x in widened]}
    expected[name] = exp


for name, kw, gz in [("latest_gzip.h5", {"libver": "latest"}, True),
                     ("default_gzip.h5", {}, True)]:
    with h5py.File(f"{out}/{name}", "w", **kw) as f:
        body(f, name, gz)
with open(f"{out}/expected.json", "w") as fh:
    json.dump(expected, fh)
print("wrote", list(expected))
