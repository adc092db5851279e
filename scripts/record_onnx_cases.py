#!/usr/bin/env python3
"""Records ONNX's own LSTM, GRU and RNN operator test cases (the `export_*` cases of
onnx/backend/test/case/node/{lstm,gru,rnn}.py, computed by ONNX's numpy reference) as JSON
files for tests/onnx_operators.rs: the node's attributes, its inputs (empty names = absent),
and its expected outputs. Then a few cases ONNX's suite lacks (GRU with
linear_before_reset=1, sequence_lens, initial states, other activations, reverse and
bidirectional), computed by onnxruntime.

Run: python scripts/record_onnx_cases.py tests/data/onnx   (needs `onnx` and `onnxruntime`)
"""
import importlib
import json
import os
import sys

import numpy as np
import onnx
from onnx import helper


def tensor(a):
    a = np.asarray(a)
    return {"shape": list(a.shape), "data": [float(v) for v in a.astype(np.float64).ravel()]}


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    written = 0
    for op in ["lstm", "gru", "rnn"]:
        mod = importlib.import_module(f"onnx.backend.test.case.node.{op}")
        captured = []

        def expect(node, inputs, outputs, name, **kwargs):
            captured.append((node, inputs, outputs, name))

        mod.expect = expect
        for cls in vars(mod).values():
            if not isinstance(cls, type):
                continue
            for attr in dir(cls):
                if attr.startswith("export"):
                    getattr(cls, attr)()
        for node, inputs, outputs, name in captured:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: (v.decode() if isinstance(v, bytes) else
                         [x.decode() if isinstance(x, bytes) else x for x in v] if isinstance(v, list) else v)
                     for k, v in attrs.items()}
            ins = {}
            for n, a in zip(node.input, inputs):
                if n:
                    ins[n] = tensor(a)
            # (`expect` gets the outputs of the non-empty output names, in order)
            outs = {n: tensor(a) for n, a in zip([n for n in node.output if n], outputs)}
            case = {"name": name, "op_type": node.op_type, "attributes": attrs,
                    "input_names": list(node.input), "inputs": ins,
                    "output_names": list(node.output), "outputs": outs,
                    "onnx_version": onnx.__version__}
            with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
                json.dump(case, f)
            written += 1
            print(name, node.op_type, attrs, list(node.input), list(node.output))
    written += extra_cases(out_dir)
    print(f"{written} cases written to {out_dir}")


def extra_cases(out_dir):
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(7)
    cases = [
        # name, op, attrs, T, B, I, H, bias, seq_lens, initial
        ("ort_gru_reset_after_bidirectional_seq_lens", "GRU",
         {"hidden_size": 5, "direction": "bidirectional", "linear_before_reset": 1}, 6, 3, 4, 5,
         True, [6, 2, 4], True),
        ("ort_gru_reset_after_reverse", "GRU",
         {"hidden_size": 3, "direction": "reverse", "linear_before_reset": 1}, 5, 2, 3, 3,
         True, None, False),
        ("ort_lstm_reverse_seq_lens_initial", "LSTM",
         {"hidden_size": 4, "direction": "reverse"}, 7, 3, 2, 4, True, [7, 3, 5], True),
        ("ort_lstm_bidirectional_initial", "LSTM",
         {"hidden_size": 3, "direction": "bidirectional"}, 4, 2, 3, 3, True, None, True),
        ("ort_rnn_relu_seq_lens", "RNN",
         {"hidden_size": 4, "activations": ["Relu"]}, 5, 3, 3, 4, True, [5, 1, 3], True),
        ("ort_lstm_hard_sigmoid_keras2", "LSTM",
         {"hidden_size": 3, "activations": ["HardSigmoid", "Tanh", "Tanh"],
          "activation_alpha": [0.2], "activation_beta": [0.5]}, 4, 2, 3, 3, True, None, False),
    ]
    for name, op, attrs, T, B, I, H, bias, lens, initial in cases:
        g = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
        d = 2 if attrs.get("direction") == "bidirectional" else 1
        batchwise = attrs.get("layout", 0) == 1
        x = rng.uniform(-1, 1, (B, T, I) if batchwise else (T, B, I)).astype(np.float32)
        w = rng.uniform(-0.5, 0.5, (d, g * H, I)).astype(np.float32)
        r = rng.uniform(-0.5, 0.5, (d, g * H, H)).astype(np.float32)
        b = rng.uniform(-0.3, 0.3, (d, 2 * g * H)).astype(np.float32)
        feeds = {"X": x}
        inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")]
        names = ["X", "W", "R"]
        inputs = {"X": x, "W": w, "R": r}
        names.append("B" if bias else "")
        if bias:
            inits.append(numpy_helper.from_array(b, "B"))
            inputs["B"] = b
        if lens is not None:
            sl = np.array(lens, dtype=np.int32)
            inits.append(numpy_helper.from_array(sl, "sequence_lens"))
            inputs["sequence_lens"] = sl
            names.append("sequence_lens")
        else:
            names.append("")
        if initial:
            shape = (B, d, H) if batchwise else (d, B, H)
            h0 = rng.uniform(-1, 1, shape).astype(np.float32)
            inits.append(numpy_helper.from_array(h0, "initial_h"))
            inputs["initial_h"] = h0
            names.append("initial_h")
            if op == "LSTM":
                c0 = rng.uniform(-1, 1, shape).astype(np.float32)
                inits.append(numpy_helper.from_array(c0, "initial_c"))
                inputs["initial_c"] = c0
                names.append("initial_c")
        while names and names[-1] == "":
            names.pop()
        outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
        node = helper.make_node(op, names, outs, **attrs)
        ys = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs]
        graph = helper.make_graph([node], name, [helper.make_tensor_value_info(
            "X", TensorProto.FLOAT, list(x.shape))], ys, initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        results = sess.run(outs, feeds)
        case = {"name": name, "op_type": op, "attributes": attrs, "input_names": names,
                "inputs": {k: tensor(v) for k, v in inputs.items()},
                "output_names": outs, "outputs": {n: tensor(v) for n, v in zip(outs, results)},
                "onnx_version": onnx.__version__, "onnxruntime_version": ort.__version__}
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(case, f)
        print(name, op, attrs)
    return len(cases)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/onnx")
