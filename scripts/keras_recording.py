"""What the model-recording scripts share: seeded weights for every layer, and a model saved
with its inputs and Keras's predictions as NAME.keras, NAME.input[.k].npy and
NAME.expected[.k].npy (the files tests/common reads)."""
import os

import numpy as np


def randomize(model, rng):
    """Every weight of every innermost layer drawn uniform(-0.6, 0.6) from `rng` (moving
    variances uniform(0.5, 1.5)), in layer order."""
    for layer in model._flatten_layers(include_self=False):
        if layer.weights and not layer._layers:
            ws = []
            for v in layer.weights:
                lo, hi = (0.5, 1.5) if "variance" in v.path else (-0.6, 0.6)
                ws.append(rng.uniform(lo, hi, v.shape).astype("float32"))
            layer.set_weights(ws)


def save(out, name, model, inputs):
    """Saves `model`, `inputs` (a boolean mask input as 0/1 float32, as the crate reads every
    input) and its predictions on them under `out`; returns the predictions."""
    model.save(os.path.join(out, f"{name}.keras"))
    outs = model.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    for k, x in enumerate(inputs):
        x = x.astype("float32") if x.dtype == bool else x
        np.save(os.path.join(out, f"{name}.input.{k}.npy" if len(inputs) > 1 else f"{name}.input.npy"), x)
    for k, o in enumerate(outs):
        np.save(os.path.join(out, f"{name}.expected.{k}.npy" if len(outs) > 1 else f"{name}.expected.npy"),
                np.asarray(o, dtype="float32"))
    print(name, [np.shape(o) for o in outs])
    return outs
