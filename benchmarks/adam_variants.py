"""How much of the bf16 step could fusing Adam with the weight copies save? An upper bound.

The fast bf16 step on a CPU ends with three passes over the seed network's 3.27 M weights: the
bf16 gradients copied into float32 buffers, the fused Adam kernel (float32 weights and moments),
and the bf16 weight copies refreshed from the new weights (``mnist_cnn.step``). One loop could
do all three, reading each value once. PyTorch has no such kernel; ``torch.compile`` can write
one (it needs a C++ compiler, and compiles for tens of seconds). Side by side, on the seed
network's parameter shapes, alternating rounds: median ms per update, and the compile time.
(The compiled loop computes Adam in the textbook order, not bit for bit the fused kernel's.)

    .venv/bin/python benchmarks/adam_variants.py [--rounds 7] [--updates 20] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mnist_cnn.model import DeepMNIST  # noqa: E402

LR, B1, B2, EPS = 1e-4, 0.9, 0.999, 1e-8


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--updates", type=int, default=20, help="updates per round (20)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args()
    if min(args.rounds, args.updates, args.threads or 1) < 1:
        p.error("--rounds, --updates and --threads must be at least 1")
    if os.environ.get("MNIST_CNN_DRY_RUN"):
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [q.shape for q in DeepMNIST().parameters()]
    weights = [torch.randn(s) * 0.1 for s in shapes]
    grads16 = [(torch.randn(s) * 1e-3).bfloat16() for s in shapes]
    grads32 = [torch.empty(s) for s in shapes]
    m = [torch.zeros(s) for s in shapes]
    v = [torch.zeros(s) for s in shapes]
    copies = [w.bfloat16() for w in weights]
    steps = [torch.zeros(()) for _ in shapes]

    def three_passes() -> None:
        torch._foreach_copy_(grads32, grads16)
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(weights, grads32, m, v, [], steps, amsgrad=False, lr=LR, beta1=B1,
                           beta2=B2, weight_decay=0.0, eps=EPS, maximize=False, grad_scale=None,
                           found_inf=None)  # fmt: skip
        torch._foreach_copy_(copies, weights)

    def one_loop(bias1: torch.Tensor, bias2_sqrt: torch.Tensor) -> None:
        for w, g16, m_, v_, c in zip(weights, grads16, m, v, copies, strict=True):
            g = g16.float()
            m_.mul_(B1).add_(g, alpha=1 - B1)
            v_.mul_(B2).addcmul_(g, g, value=1 - B2)
            w.addcdiv_(m_, (v_.sqrt() / bias2_sqrt).add_(EPS), value=-LR / bias1)
            c.copy_(w)

    t0 = time.perf_counter()
    try:
        compiled = torch.compile(one_loop, fullgraph=True, dynamic=False)
        compiled(torch.tensor(0.1), torch.tensor(0.03))
    except Exception as err:  # no C++ compiler, an unsupported platform: say so, measure the rest
        print(f"torch.compile failed here ({type(err).__name__}): only the three passes timed")
        compiled = None
    compile_s = time.perf_counter() - t0
    count = [0]

    def fused() -> None:
        count[0] += 1
        compiled(torch.tensor(1 - B1 ** count[0]), torch.tensor(math.sqrt(1 - B2 ** count[0])))

    variants = {"copy + fused Adam + copy (the fast path)": three_passes}
    if compiled is not None:
        variants["one compiled loop"] = fused
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm up
        for _ in range(3):
            fn()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            for _ in range(args.updates):
                fn()
            times[name].append((time.perf_counter() - t) / args.updates * 1e3)
    base = sorted(times[next(iter(variants))])[len(times[next(iter(variants))]) // 2]
    print(f"{sum(s.numel() for s in shapes):,} weights, {torch.get_num_threads()} threads")
    for name, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        print(f"{name:42s} {med:6.2f} ms per update ({med / base:.2f})")
    if compiled is not None:
        print(f"compiling the loop took {compile_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
