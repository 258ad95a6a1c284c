"""Where the time of one fast training step of the seed network goes, on this machine's CPU.

    .venv/bin/python benchmarks/profile_step.py [--steps 20] [--batch-size 50]

Prints ms per step, the profiler's top operators, and the arithmetic rate (GFLOP/s) that the
step as a whole reaches, counting the network's multiply-adds (forward, and backward at twice
the forward less conv1's unneeded input gradient).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mnist_cnn.fast import make_adam, make_step, prepare_model
from mnist_cnn.model import DeepMNIST


def step_flops(batch: int) -> float:
    """Floating-point operations of one training step of the seed network (2 per multiply-add)."""
    conv1 = 28 * 28 * 32 * 5 * 5 * 1
    conv2 = 14 * 14 * 64 * 5 * 5 * 32
    fc1 = 7 * 7 * 64 * 1024
    fc2 = 1024 * 10
    forward = conv1 + conv2 + fc1 + fc2
    backward = 2 * forward - conv1  # weight and input gradients; the image needs none
    return 2.0 * batch * (forward + backward)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=50)
    args = p.parse_args()
    device = torch.device("cpu")
    model = prepare_model(DeepMNIST(), device, fast=True)
    step = make_step(model, make_adam(model.parameters(), 1e-4, device, fast=True))
    x = torch.rand(args.batch_size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    for _ in range(5):  # warm-up: oneDNN picks its kernels on the first calls
        step(x, y)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    seconds = (time.perf_counter() - t0) / args.steps
    flops = step_flops(args.batch_size)
    print(
        f"batch {args.batch_size}: {seconds * 1e3:.1f} ms per step, "
        f"{flops / 1e9:.2f} GFLOP per step, {flops / seconds / 1e9:.0f} GFLOP/s, "
        f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(x, y)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
