"""Where the time of one fast training step of the seed network goes, on this machine's CPU.

    .venv/bin/python benchmarks/profile_step.py [--steps 20] [--batch-size 50]

Prints ms per step, the profiler's top operators, and the arithmetic rate (GFLOP/s) that the
step as a whole reaches, counting the network's multiply-adds (forward, and backward at twice
the forward less conv1's unneeded input gradient).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mnist_cnn.bench import step_flops
from mnist_cnn.errors import ConfigError
from mnist_cnn.model import ModelConfig, build_model
from mnist_cnn.step import build_step, make_optimizer, prepare_model, resolve_plan


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--plain-step", action="store_true", help="profile the plain step instead")
    args = p.parse_args()
    if min(args.steps, args.batch_size) < 1:
        p.error("--steps and --batch-size must be at least 1")
    if os.environ.get("MNIST_CNN_DRY_RUN"):  # the docs test: start-up and arguments only
        print(f"would profile {args.steps} steps at batch {args.batch_size}, {args.precision}")
        return 0
    try:
        plan = resolve_plan(torch.device("cpu"), args.precision, plain=args.plain_step)
    except ConfigError as err:  # bf16 asked for where it is only emulated: one line
        print(f"profile_step: {err}", file=sys.stderr)
        return 2
    model = prepare_model(build_model(ModelConfig()), plan)
    step = build_step(model, make_optimizer(model.parameters(), 1e-4, plan), plan)
    x = torch.rand(args.batch_size, 1, 28, 28)
    if plan.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    for _ in range(5):  # warm-up: oneDNN picks its kernels on the first calls
        step(x, y)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    seconds = (time.perf_counter() - t0) / args.steps
    flops = step_flops(ModelConfig(), args.batch_size)
    print(plan.summary())
    print(
        f"batch {args.batch_size}: {seconds * 1e3:.1f} ms per step, "
        f"{flops / 1e9:.2f} GFLOP per step, {flops / seconds / 1e9:.0f} GFLOP/s"
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(x, y)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
