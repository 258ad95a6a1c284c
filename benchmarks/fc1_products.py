"""fc1's three matrix products at the recipe's batch, alone: how near the machine's rate?

The seed network's fc1 (3,136 → 1,024) costs 0.96 GFLOP a training step at batch 50: the forward
(50 × 3,136 by 3,136 × 1,024), the input gradient (50 × 1,024 by 1,024 × 3,136) and the weight
gradient (1,024 × 50 by 50 × 3,136). Each timed alone, with warm caches and after a 64 MB sweep
that evicts them (as the rest of a training step does), beside the 2,048² product the bench
calls the machine's rate; at ``--dtype`` float32 or bfloat16. Median of ``--repeats``.

    .venv/bin/python benchmarks/fc1_products.py [--dtype float32] [--batch-size 50] [--repeats 40]
    benchmarks/as_avx2.sh .venv/bin/python benchmarks/fc1_products.py
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], repeats: int, before: Callable[[], object]) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args()
    if min(args.batch_size, args.repeats) < 1:
        p.error("--batch-size and --repeats must be at least 1")
    if os.environ.get("MNIST_CNN_DRY_RUN"):
        return 0
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    n, k, m = args.batch_size, 3136, 1024
    x = torch.randn(n, k, dtype=dtype)
    w = (torch.randn(m, k) * 0.1).to(dtype)
    gy = torch.randn(n, m, dtype=dtype)
    gw = torch.empty(m, k, dtype=dtype)
    sweep = torch.zeros(16 * 1024 * 1024)  # 64 MB, more than the last-level caches here
    flop = 2 * n * k * m
    products = {
        "forward (x @ W.T)": lambda: torch.nn.functional.linear(x, w),
        "input gradient (dy @ W)": lambda: gy @ w,
        "weight gradient (dy.T @ x)": lambda: torch.mm(gy.t(), x, out=gw),
    }
    a = torch.randn(2048, 2048, dtype=dtype)
    rate = 2 * 2048**3 / median_seconds(lambda: a @ a, 5, lambda: None) / 1e9
    print(f"{args.dtype}, batch {n}, {torch.get_num_threads()} threads; 2,048² product: "
          f"{rate:.0f} GFLOP/s")  # fmt: skip
    total = {"warm": 0.0, "cold": 0.0}
    for name, fn in products.items():
        cells = []
        for label, before in (("warm", lambda: None), ("cold", lambda: sweep.add_(1.0))):
            s = median_seconds(fn, args.repeats, before)
            total[label] += s
            cells.append(f"{label} {s * 1e3:.2f} ms, {flop / s / 1e9:.0f} GFLOP/s "
                         f"({flop / s / 1e9 / rate:.0%})")  # fmt: skip
        print(f"{name:28s} " + " | ".join(cells))
    cells = []
    for label, s in total.items():
        gflops = 3 * flop / s / 1e9
        cells.append(f"{label} {s * 1e3:.2f} ms, {gflops:.0f} GFLOP/s ({gflops / rate:.0%})")
    print(f"{'all three':28s} " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
