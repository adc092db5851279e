#!/usr/bin/env python3
"""One PyTorch CPU training step of the model the crate's train_bench example times:
LSTM(units) on [B, T, I] (batch_first), the last step's output into Linear(units, 1), MSE,
Adam(1e-3); forward, backward and the update, median over --iters runs after --warmup.
Prints one JSON line. Threads: --threads (default 2, the machine's cores).

Usage (a venv with torch and numpy):
  python scripts/torch_train_step.py --batch 32 --steps 100 --input 32 --units 128
"""
import argparse
import json
import statistics
import time

import torch

ap = argparse.ArgumentParser()
for k, d in [("batch", 32), ("steps", 100), ("input", 32), ("units", 128), ("iters", 10),
             ("warmup", 2), ("threads", 2)]:
    ap.add_argument(f"--{k}", type=int, default=d)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
lstm = torch.nn.LSTM(a.input, a.units, batch_first=True)
dense = torch.nn.Linear(a.units, 1)
params = list(lstm.parameters()) + list(dense.parameters())
opt = torch.optim.Adam(params, lr=1e-3)
x = torch.rand(a.batch, a.steps, a.input) - 0.5
y = (torch.rand(a.batch, 1) - 0.5) * 0.2


def step():
    opt.zero_grad(set_to_none=True)
    out, _ = lstm(x)
    loss = torch.nn.functional.mse_loss(dense(out[:, -1, :]), y)
    loss.backward()
    opt.step()
    return loss.item()


for _ in range(a.warmup + 1):
    step()
times = []
for _ in range(a.iters):
    s = time.perf_counter()
    step()
    times.append((time.perf_counter() - s) * 1e3)
print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "batch": a.batch,
                  "steps": a.steps, "input": a.input, "units": a.units,
                  "step_ms": statistics.median(times), "threads": a.threads}))
