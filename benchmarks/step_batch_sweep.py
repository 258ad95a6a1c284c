"""The seed network's fast step at several batch sizes, side by side in one run: how much of a
step is paid once per step whatever the batch (Adam, the weight copies, the products' weight
traffic) and how fast the per-image arithmetic runs.

    .venv/bin/python benchmarks/step_batch_sweep.py [--batch-sizes 2 10 25 50 100]
        [--rounds 6] [--steps 10] [--precision auto] [--threads N] [--target F]

Each round times ``--steps`` steps at each batch size in turn on one fixed batch (the steps
alone, no data feed), so background load falls on all alike; the median per step is fitted as
``fixed + per_image × batch`` (least squares). The per-image part's arithmetic rate is then set
against the machine's large-matrix-multiply rate at the step's precision (``mnist-cnn bench``'s
2,048² product), and the fixed part against what the issue's target (the step at 65% of that
rate at batch 50 in bf16, 85% in fp32; ``--target`` for another) would leave for it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mnist_cnn.bench import matmul_rate, step_flops  # noqa: E402
from mnist_cnn.errors import ConfigError  # noqa: E402
from mnist_cnn.model import ModelConfig, build_model  # noqa: E402
from mnist_cnn.step import build_step, make_optimizer, prepare_model, resolve_plan  # noqa: E402

# Issue 10's targets: the bf16 step at >= 65% of the bf16 matrix-multiply rate, the fp32 step at
# >= 85% of the fp32 rate (on an AVX2-only CPU).
TARGETS = {"bf16": 0.65, "fp32": 0.85}
MAX_BATCH = 4096  # far past where the fit is told apart; keeps a typo from allocating gigabytes


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (xs, ys)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 10, 25, 50, 100])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="steps per batch size per round")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--target", type=float, default=0.0, help="fraction of the rate (0.65 bf16, 0.85 fp32)"
    )
    args = parser.parse_args()
    sizes = sorted(set(args.batch_sizes))
    if min(args.rounds, args.steps, *sizes) < 1 or args.threads < 0 or len(sizes) < 2:
        parser.error(
            "give two or more batch sizes; they, --rounds and --steps must be at least 1, "
            "--threads at least 0"
        )
    if max(sizes) > MAX_BATCH:
        parser.error(f"batch sizes up to {MAX_BATCH}")
    if not 0 <= args.target < 1:
        parser.error("--target is a fraction of the rate, below 1")
    if os.environ.get("MNIST_CNN_DRY_RUN"):  # the docs test: start-up and arguments only
        print(f"would time batch sizes {sizes}, {args.rounds} rounds of {args.steps} steps")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    try:
        plan = resolve_plan(device, args.precision)
    except ConfigError as err:  # bf16 asked for where it is only emulated: one line
        print(f"step_batch_sweep: {err}", file=sys.stderr)
        return 2
    config = ModelConfig()
    gen = torch.Generator().manual_seed(0)
    steps = {}
    for batch in sizes:
        torch.manual_seed(0)
        model = prepare_model(build_model(config), plan)
        step = build_step(model, make_optimizer(model.parameters(), 1e-4, plan), plan)
        x = torch.rand(batch, 1, 28, 28, generator=gen)
        if plan.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), generator=gen)
        for _ in range(3):  # warm-up: oneDNN picks its kernels
            step(x, y)
        steps[batch] = (step, x, y)
    times: dict[int, list[float]] = {batch: [] for batch in sizes}
    for _ in range(args.rounds):
        for batch, (step, x, y) in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            times[batch].append((time.perf_counter() - t0) / args.steps)
    rate = matmul_rate(device, plan.precision).gflop_per_s
    medians = {batch: statistics.median(ts) for batch, ts in times.items()}
    print(f"{plan.summary()}")
    print(f"{plan.precision} matrix multiply (2,048²): {rate:.0f} GFLOP/s")
    print(f"{'batch':>6} {'ms/step':>9} {'GFLOP/s':>9} {'of rate':>8}")
    for batch, sec in medians.items():
        gflops = step_flops(config, batch) / sec / 1e9
        print(f"{batch:>6} {1e3 * sec:>9.2f} {gflops:>9.0f} {gflops / rate:>8.0%}")
    fixed, per_image = fit_line([float(b) for b in medians], list(medians.values()))
    if per_image <= 0 or fixed + 50 * per_image <= 0:  # noise swamped sizes too close together
        print(
            "step_batch_sweep: the times do not grow with the batch; "
            "give batch sizes further apart or more --rounds",
            file=sys.stderr,
        )
        return 1
    image_rate = step_flops(config, 1) / per_image / 1e9
    print(
        f"fit: {1e3 * fixed:.2f} ms per step whatever the batch + {1e3 * per_image:.3f} ms "
        f"per image; the per-image arithmetic at {image_rate:.0f} GFLOP/s, "
        f"{image_rate / rate:.0%} of the rate"
    )
    step50 = fixed + 50 * per_image
    target = args.target or TARGETS[plan.precision]
    target50 = step_flops(config, 50) / (target * rate * 1e9)
    print(
        f"batch 50: {1e3 * step50:.2f} ms (fit), of which the fixed part "
        f"{fixed / step50:.0%}; {target:.0%} of the rate needs "
        f"{1e3 * target50:.2f} ms, leaving {1e3 * (target50 - 50 * per_image):.2f} ms "
        "for the fixed part at this per-image speed"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
