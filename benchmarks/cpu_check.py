"""The CPU targets in one run: the fast path against the plain loop, at the precision ``auto``
picks here and in fp32, side by side, with each step's share of this machine's matmul rate.

    .venv/bin/python benchmarks/cpu_check.py [--steps 300] [--threads N] [--out cpu_check.json]

Targets (docs/speed.md): on a CPU with native bf16 the fast path ≥ 3× the plain loop; in fp32
the fast step ≥ 85% of the machine's fp32 matrix-multiply rate. Each ``bench`` first checks that
the fast path computes the plain step's function; the script exits 1 if it does not. Run it on
an AVX2-only machine as it is; to see that view on a CPU with native bf16, hold torch's kernels
and both libraries it calls at AVX2: ``benchmarks/as_avx2.sh .venv/bin/python
benchmarks/cpu_check.py`` (holding only oneDNN and torch's own kernels leaves MKL's fp32
products, and so the matmul rate, on AVX-512).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mnist_cnn.bench import bench, format_report  # noqa: E402

RATIO_TARGET = 3.0  # fast path over the plain loop, where bf16 is native
FP32_FRACTION_TARGET = 0.85  # the fp32 fast step's share of the fp32 matmul rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per loop (300)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for both loops (default: torch's; 1 is steadier on a shared machine)",
    )
    args = parser.parse_args()
    if args.threads < 0:
        parser.error("--threads must be 0 (torch's default) or more")
    if os.environ.get("MNIST_CNN_DRY_RUN"):  # the docs test: start-up and arguments only
        print(f"would time {args.steps} steps per loop at --precision auto and fp32")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    results = {}
    ok = True
    for precision in ("auto", "fp32"):
        report = bench(device, steps=args.steps, precision=precision)
        ok &= report.ok
        results[precision] = report.to_dict()
        print(f"--precision {precision}: {report.plan.summary()}; {date.today().isoformat()}")
        print(format_report(report))
        if not report.rows:
            continue
        ratio = report.rows[-1].ratio
        fraction = report.fraction_of_limit or 0.0
        if report.plan.precision == "bf16":
            verdict = "met" if ratio >= RATIO_TARGET else "NOT met"
            print(f"target: fast path ≥ {RATIO_TARGET:g}× the plain loop: {ratio:.2f}×, {verdict}")
        else:
            verdict = "met" if fraction >= FP32_FRACTION_TARGET else "NOT met"
            print(
                f"target: fp32 step ≥ {100 * FP32_FRACTION_TARGET:.0f}% of the fp32 matmul rate: "
                f"{100 * fraction:.0f}%, {verdict}"
            )
        print()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
