"""The fast training step with glibc's default allocator settings and with freed memory kept
(``device.keep_freed_memory``), side by side: ms per step and page faults per step.

    .venv/bin/python benchmarks/page_faults.py [--network fast|seed] [--rounds 4] [--steps 40]

The setting holds for a whole process and cannot be taken back, so each measurement is a
fresh process (started from this script), the two kinds alternating, ``--rounds`` of each.
Each process builds the network's fast step at the precision ``auto`` picks here (the plan's
own), warms it up on one fixed batch (the fast preset's 128 images, the seed's 50), then times
``--steps`` steps and counts the minor page faults they take. Prints every process's figures,
the medians and the ratio (kept / default). Run it under ``benchmarks/as_avx2.sh`` for the
fp32 view of an AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KINDS = ("default", "kept")


def measure(network: str, kind: str, steps: int) -> dict[str, float]:
    """One process's figures: ms per step and minor page faults per step."""
    sys.path.insert(0, str(REPO / "src"))
    import dataclasses

    import torch

    from mnist_cnn.model import FAST_CNN, ModelConfig, build_model
    from mnist_cnn.step import build_step, make_optimizer, prepare_model, resolve_plan

    plan = resolve_plan(torch.device("cpu"), "auto")
    plan = dataclasses.replace(plan, freed_memory_kept=kind == "kept" and plan.freed_memory_kept)
    config, batch = (FAST_CNN, 128) if network == "fast" else (ModelConfig(), 50)
    model = prepare_model(build_model(config), plan)
    step = build_step(model, make_optimizer(model.parameters(), 1e-3, plan), plan)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=gen)
    for _ in range(10):  # warm-up: oneDNN picks its kernels, the allocator settles
        step(x, y)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    seconds = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"ms": seconds / steps * 1e3, "faults": faults / steps, "plan": plan.summary()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", choices=["fast", "seed"], default="fast")
    p.add_argument("--rounds", type=int, default=4, help="processes of each kind (4)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per process (40)")
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.network, args.child, args.steps)))
        return 0
    if os.environ.get("MNIST_CNN_DRY_RUN"):  # the docs test: start-up and arguments only
        print(f"would time {args.rounds} × 2 processes of {args.steps} steps ({args.network})")
        return 0
    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be at least 1")
    figures: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    for i in range(args.rounds):
        for kind in KINDS:
            cmd = [sys.executable, __file__, "--child", kind, "--network", args.network]
            out = subprocess.run(
                [*cmd, "--steps", str(args.steps)], capture_output=True, text=True, check=False
            )
            if out.returncode != 0:
                print(f"page_faults: the {kind} process failed: {out.stderr.strip()[-300:]}")
                return 1
            row = json.loads(out.stdout.strip().splitlines()[-1])
            figures[kind].append(row)
            print(
                f"round {i + 1} {kind:7}: {row['ms']:6.1f} ms/step, "
                f"{row['faults']:6.0f} faults/step"
            )
    print(figures["kept"][0]["plan"])
    median = {k: statistics.median(r["ms"] for r in figures[k]) for k in KINDS}
    faults = {k: statistics.median(r["faults"] for r in figures[k]) for k in KINDS}
    print(
        f"{args.network} network: default {median['default']:.1f} ms/step "
        f"({faults['default']:.0f} faults), kept {median['kept']:.1f} ms/step "
        f"({faults['kept']:.0f} faults), kept/default {median['kept'] / median['default']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
