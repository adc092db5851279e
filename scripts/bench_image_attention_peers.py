#!/usr/bin/env python3
"""CPU peer benchmark: Conv2D and MultiHeadAttention, lstm-wgpu against onnxruntime.

For each case it (a) builds a Keras 3 model holding the single layer (fixed input shape,
seeded uniform(-0.3, 0.3) weights) and saves it to OUT/NAME.keras; (b) builds the same
computation as an ONNX graph with the same weights, OUT/NAME.onnx, and checks onnxruntime's
output against Keras's predict on one input (max |diff| <= 1e-4); (c) times onnxruntime
(intra_op_num_threads=2, inter_op_num_threads=1; median of --iters runs after --warmup) and
prints one JSON line per timed graph:

  {"peer":"onnxruntime","case":...,"median_s":...,"min_s":...,"max_s":...,"gflops":...}

Conv2D cases are timed twice: "NAME" is the NHWC graph (Transpose -> Conv -> Transpose, so it
takes and returns NHWC like Keras) and "NAME:nchw" is the Conv op alone on NCHW data.
The MHA graph is MatMul/Add/Reshape/Transpose/Mul/Softmax, as Keras computes it: q, k, v
projections with bias, q scaled by 1/sqrt(key_dim), softmax over the keys, weighted sum of
the values, output projection.

FLOPs (multiply-add = 2): Conv2D 2*B*OH*OW*KH*KW*Cin*F (bias/activation not counted);
MHA 2*B*T*D*H*kd*3 (q, k, v) + 2*B*H*T*S*kd (scores) + 2*B*H*T*S*vd (weighted sum)
+ 2*B*T*H*vd*D (output); softmax not counted.

With --crate BIN it also runs the crate's bench example on the same .keras files,
alternating crate and ort --rounds times per case, and prints the crate's JSON lines
(one per run, tagged with "case" and "round") plus a per-case summary line of medians.

Usage (keras 3.15.1 + onnxruntime venv):
  KERAS_BACKEND=tensorflow python scripts/bench_image_attention_peers.py [--out /tmp/perf]
      [--cases conv_ocr,mha_seq] [--iters 20] [--warmup 3]
      [--crate /path/to/release/examples/bench --rounds 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
import onnxruntime as ort  # noqa: E402

OPSET, IR_VERSION = 17, 8

CASES = {
    # name: (kind, batch, input shape (no batch), layer config)
    "conv_ocr": ("conv", 16, (128, 32, 32),
                 dict(filters=64, kernel_size=(3, 3), strides=(1, 1), padding="same",
                      activation="relu", use_bias=True)),
    "conv_speech": ("conv", 4, (200, 81, 1),
                    dict(filters=32, kernel_size=(11, 41), strides=(2, 2), padding="same",
                         activation=None, use_bias=False)),
    "conv_small": ("conv", 1, (32, 16, 8),
                   dict(filters=16, kernel_size=(3, 3), strides=(1, 1), padding="same",
                        activation=None, use_bias=True)),
    "mha_seq": ("mha", 8, (128, 64), dict(num_heads=4, key_dim=16)),
    "mha_long": ("mha", 2, (512, 128), dict(num_heads=8, key_dim=16)),
}


def same_pads(size, k, s):
    """TensorFlow's "same": out = ceil(size/s), the odd pad at the end."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def randomize(model, rng):
    for layer in model.layers:
        w = layer.get_weights()
        if w:
            layer.set_weights([rng.uniform(-0.3, 0.3, a.shape).astype("float32") for a in w])


def model_proto(name, nodes, inits, in_shape, out_shape):
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m)
    return m


def conv_case(name, batch, shape, cfg, rng):
    h, w, c = shape
    inp = keras.Input(shape)
    model = keras.Model(inp, layers.Conv2D(**cfg, name="conv")(inp))
    randomize(model, rng)
    wts = model.get_layer("conv").get_weights()
    kernel = wts[0]  # [KH, KW, Cin, F]
    kh, kw, _, f = kernel.shape
    sh, sw = cfg["strides"]
    oh, ph0, ph1 = same_pads(h, kh, sh)
    ow, pw0, pw1 = same_pads(w, kw, sw)
    inits = {"W": kernel.transpose(3, 2, 0, 1)}  # [F, Cin, KH, KW]
    conv_in = ["xc", "W"]
    if cfg["use_bias"]:
        inits["Bc"] = wts[1]
        conv_in.append("Bc")
    conv_attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph0, pw0, ph1, pw1])

    def graph(nhwc):
        nodes = []
        src = "x"
        if nhwc:
            nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]))
            src = "xt"
        ins = [src] + conv_in[1:]
        act = cfg["activation"] == "relu"
        conv_out = "yc" if (act or nhwc) else "y"
        nodes.append(helper.make_node("Conv", ins, [conv_out], **conv_attrs))
        if act:
            relu_out = "yr" if nhwc else "y"
            nodes.append(helper.make_node("Relu", [conv_out], [relu_out]))
            conv_out = relu_out
        if nhwc:
            nodes.append(helper.make_node("Transpose", [conv_out], ["y"], perm=[0, 2, 3, 1]))
            return model_proto(name, nodes, inits, [batch, h, w, c], [batch, oh, ow, f])
        return model_proto(name, nodes, inits, [batch, c, h, w], [batch, f, oh, ow])

    flops = 2 * batch * oh * ow * kh * kw * c * f
    return model, {"": (graph(True), False), ":nchw": (graph(False), True)}, flops


def mha_case(name, batch, shape, cfg, rng):
    t, d = shape
    inp = keras.Input(shape)
    model = keras.Model(inp, layers.MultiHeadAttention(**cfg, name="mha")(inp, inp))
    randomize(model, rng)
    layer = model.get_layer("mha")
    nh, kd = cfg["num_heads"], cfg["key_dim"]
    vd = cfg.get("value_dim") or kd
    ws = {v.path.split("/")[-2] + "/" + v.path.split("/")[-1]: np.asarray(v.numpy())
          for v in layer.weights}
    inits = {
        "Wq": ws["query/kernel"].reshape(d, nh * kd), "bq": ws["query/bias"].reshape(nh * kd),
        "Wk": ws["key/kernel"].reshape(d, nh * kd), "bk": ws["key/bias"].reshape(nh * kd),
        "Wv": ws["value/kernel"].reshape(d, nh * vd), "bv": ws["value/bias"].reshape(nh * vd),
        "Wo": ws["attention_output/kernel"].reshape(nh * vd, d),
        "bo": ws["attention_output/bias"].reshape(d),
        "scale": np.array(1.0 / np.sqrt(kd), dtype="float32"),
        "shk": np.array([0, 0, nh, kd], dtype="int64"),
        "shv": np.array([0, 0, nh, vd], dtype="int64"),
        "shc": np.array([0, 0, nh * vd], dtype="int64"),
    }
    mk = helper.make_node
    nodes = [
        mk("MatMul", ["x", "Wq"], ["q0"]), mk("Add", ["q0", "bq"], ["q1"]),
        mk("Reshape", ["q1", "shk"], ["q2"]), mk("Transpose", ["q2"], ["q3"], perm=[0, 2, 1, 3]),
        mk("Mul", ["q3", "scale"], ["q"]),                                  # [B, H, T, kd]
        mk("MatMul", ["x", "Wk"], ["k0"]), mk("Add", ["k0", "bk"], ["k1"]),
        mk("Reshape", ["k1", "shk"], ["k2"]), mk("Transpose", ["k2"], ["kT"], perm=[0, 2, 3, 1]),
        mk("MatMul", ["x", "Wv"], ["v0"]), mk("Add", ["v0", "bv"], ["v1"]),
        mk("Reshape", ["v1", "shv"], ["v2"]), mk("Transpose", ["v2"], ["v"], perm=[0, 2, 1, 3]),
        mk("MatMul", ["q", "kT"], ["s"]),                                   # [B, H, T, S]
        mk("Softmax", ["s"], ["p"], axis=-1),
        mk("MatMul", ["p", "v"], ["c0"]),                                   # [B, H, T, vd]
        mk("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]), mk("Reshape", ["c1", "shc"], ["c"]),
        mk("MatMul", ["c", "Wo"], ["y0"]), mk("Add", ["y0", "bo"], ["y"]),
    ]
    proto = model_proto(name, nodes, inits, [batch, t, d], [batch, t, d])
    s = t
    flops = (2 * batch * t * d * nh * kd * 2 + 2 * batch * t * d * nh * vd
             + 2 * batch * nh * t * s * kd + 2 * batch * nh * t * s * vd
             + 2 * batch * t * nh * vd * d)
    return model, {"": (proto, False)}, flops


def session(proto):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def time_ort(sess, x, iters, warmup):
    for _ in range(warmup):
        sess.run(["y"], {"x": x})
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(["y"], {"x": x})
        ts.append(time.perf_counter() - t0)
    return ts


def run_crate(bin_, path, batch, flops_per_row, iters, warmup):
    cmd = [bin_, "--model", path, "--backend", "cpu", "--batch", str(batch), "--steps", "1",
           "--iters", str(iters), "--warmup", str(warmup), "--flops", str(flops_per_row),
           "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/perf")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--crate", help="the crate's bench example binary, to alternate with ort")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    ok = True
    for name in a.cases.split(","):
        kind, batch, shape, cfg = CASES[name]
        rng = np.random.RandomState(sum(map(ord, name)))
        keras.utils.set_random_seed(0)
        build = conv_case if kind == "conv" else mha_case
        model, graphs, flops = build(name, batch, shape, cfg, rng)
        kpath = os.path.join(a.out, f"{name}.keras")
        model.save(kpath)
        x = rng.uniform(-1, 1, (batch, *shape)).astype("float32")
        want = np.asarray(model.predict(x, verbose=0))
        sessions = {}
        for suffix, (proto, nchw) in graphs.items():
            onnx.save(proto, os.path.join(a.out, f"{name}{suffix.replace(':', '_')}.onnx"))
            sess = session(proto)
            xin = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw else x
            got = sess.run(["y"], {"x": xin})[0]
            if nchw:
                got = got.transpose(0, 2, 3, 1)
            err = float(np.max(np.abs(got - want)))
            passed = got.shape == want.shape and err <= 1e-4
            ok &= passed
            print(json.dumps({"check": name + suffix, "shape": list(want.shape),
                              "max_abs_diff": err, "max_abs_keras": float(np.max(np.abs(want))),
                              "pass": passed}), flush=True)
            sessions[suffix] = (sess, xin)

        def ort_line(suffix, rnd=None):
            sess, xin = sessions[suffix]
            ts = time_ort(sess, xin, a.iters, a.warmup)
            med = statistics.median(ts)
            line = {"peer": "onnxruntime", "case": name + suffix, "median_s": med,
                    "min_s": min(ts), "max_s": max(ts), "gflops": flops / med / 1e9,
                    "flops": flops, "runs": len(ts)}
            if rnd is not None:
                line["round"] = rnd
            print(json.dumps(line), flush=True)
            return med

        if not a.crate:
            for suffix in sessions:
                ort_line(suffix)
            continue
        meds = {"crate": []}
        for rnd in range(a.rounds):
            c = run_crate(a.crate, kpath, batch, flops // batch, a.iters, a.warmup)
            c.update(case=name, round=rnd, peer="lstm-wgpu")
            print(json.dumps(c), flush=True)
            meds["crate"].append(c["median_ms"] / 1e3)
            for suffix in sessions:
                meds.setdefault(suffix, []).append(ort_line(suffix, rnd))
        summary = {"summary": name, "flops": flops,
                   "crate_median_s": statistics.median(meds["crate"])}
        for suffix in sessions:
            o = statistics.median(meds[suffix])
            summary[f"ort{suffix}_median_s"] = o
            summary[f"ratio_crate_over_ort{suffix}"] = summary["crate_median_s"] / o
        summary["crate_gflops"] = flops / summary["crate_median_s"] / 1e9
        print(json.dumps(summary), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
