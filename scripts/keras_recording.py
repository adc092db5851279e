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


# The crate's dropout masks in training mode (src/train/dropout.rs: SplitMix64, a scale
# mask of 1/(1 - rate) where the draw is >= rate, row-major), drawn here the same way.
M64 = (1 << 64) - 1


class SplitMix:
    def __init__(self, state):
        self.state = state & M64

    def next_f64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z ^= z >> 31
        return (z >> 11) / float(1 << 53)


def scale_mask(rate, shape, rng, dtype):
    draws = np.array([rng.next_f64() for _ in range(int(np.prod(shape)))]).reshape(shape)
    return np.where(draws >= rate, 1.0 / (1.0 - rate), 0.0).astype(dtype)


def layer_stream(seed, at):
    """The stream of the layer (or graph call) at `at` (src/train/chain.rs layer_seed)."""
    return SplitMix(seed ^ ((at * 0xD1B54A32D192ED03) & M64))
