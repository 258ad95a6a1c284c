"""The seed network's fast step with and without bf16 weight copies, and the plain step, side by
side in one run: what the copies save, as a ratio that background load falls on alike.

    .venv/bin/python benchmarks/step_variants.py [--rounds 10] [--steps 10] [--threads N]

Each round times ``--steps`` steps of each variant in turn on one fixed batch of 50 (no data
feed: the steps alone), and prints the median per-step time and its ratio to the plain step.
Needs a CPU with native bf16 (or ``MNIST_CNN_TEST_BF16=native``, slowly emulated).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mnist_cnn.model import ModelConfig, build_model  # noqa: E402
from mnist_cnn.step import build_step, make_optimizer, prepare_model, resolve_plan  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if min(args.rounds, args.steps) < 1 or args.threads < 0:
        parser.error("--rounds and --steps must be at least 1, --threads at least 0")
    if os.environ.get("MNIST_CNN_DRY_RUN"):  # the docs test: start-up and arguments only
        print(f"would time {args.rounds} rounds of {args.steps} steps per variant")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    fast = resolve_plan(device, "bf16")  # refused in one line where bf16 is not native
    variants = {
        "plain step (fp32, NCHW, Adam)": resolve_plan(device, "fp32", plain=True),
        "fast bf16, autocast casts": dataclasses.replace(fast, bf16_weights=False),
        "fast bf16, bf16 weight copies": fast,
    }
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(50, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (50,), generator=gen)
    steps = {}
    for name, plan in variants.items():
        torch.manual_seed(0)
        model = prepare_model(build_model(ModelConfig()), plan)
        step = build_step(model, make_optimizer(model.parameters(), 1e-4, plan), plan)
        xb = x.contiguous(memory_format=torch.channels_last) if plan.channels_last else x
        for _ in range(3):  # warm-up: oneDNN picks its kernels
            step(xb, y)
        steps[name] = (step, xb)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, (step, xb) in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(xb, y)
            times[name].append((time.perf_counter() - t0) / args.steps)
    print(f"{fast.summary()}; {args.rounds} rounds of {args.steps} steps, median per step")
    base = statistics.median(times[next(iter(times))])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:32s} {1e3 * med:7.1f} ms   {base / med:5.2f}× the plain step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
