"""Two Keras 3 models of equal FLOPs for comparing the GPU's Conv1D kernel (conv1d.wgsl, a
tiled implicit GEMM) with its projection kernel (projection.wgsl, through Dense):

  conv_bench.keras   Input (None, 64) -> Conv1D(128, 5, padding="same")
  dense_bench.keras  Input (None, 320) -> Dense(128)

At batch B and T steps both are 2 * B * T * 128 * 320 FLOPs. Usage (keras 3.15.1 venv):

  python scripts/record_bench_models.py OUT_DIR
  cargo run --release --example bench -- --model OUT_DIR/conv_bench.keras --backend gpu --batch 8 --steps 512
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
keras.utils.set_random_seed(0)
x = keras.Input((None, 64))
keras.Model(x, keras.layers.Conv1D(128, 5, padding="same")(x)).save(f"{out}/conv_bench.keras")
x = keras.Input((None, 320))
keras.Model(x, keras.layers.Dense(128)(x)).save(f"{out}/dense_bench.keras")
print("wrote", out)
