"""How long evaluating the test set takes at several batch sizes, side by side in one run.

    .venv/bin/python benchmarks/eval_batch.py RUN [--batch-sizes 1000 500 250 125] [--rounds 3]

Loads RUN's network as training prepares it on this CPU (the fast path's layout), then
evaluates the 10,000 MNIST test digits at each batch size in turn, ROUNDS times, and prints the
fastest and slowest time of each and the accuracy (the same at every batch size). MNIST from
$MNIST_CNN_DATA. MNIST_CNN_DRY_RUN=1 checks the arguments only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from mnist_cnn.checkpoint import load_model  # noqa: E402
from mnist_cnn.datasets import default_data_root, load_dataset  # noqa: E402
from mnist_cnn.errors import MnistCnnError  # noqa: E402
from mnist_cnn.evaluate import evaluate  # noqa: E402
from mnist_cnn.step import prepare_model, resolve_plan  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 500, 250, 125])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if min(args.batch_sizes) < 1 or args.rounds < 1:
        p.error("batch sizes and --rounds must be at least 1")
    if os.environ.get("MNIST_CNN_DRY_RUN"):
        print(f"would evaluate {args.run} at batch sizes {args.batch_sizes}, {args.rounds} rounds")
        return 0
    try:
        model, _ = load_model(args.run)
        model = prepare_model(model, resolve_plan(torch.device("cpu"), "auto", plain=False))
        test = load_dataset("mnist", default_data_root(), download=False).test
    except MnistCnnError as err:  # no run there, no MNIST: one line
        print(f"eval_batch: {err}", file=sys.stderr)
        return 1
    times: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    accuracy = {}
    for _ in range(args.rounds):
        for b in args.batch_sizes:
            start = time.perf_counter()
            accuracy[b] = evaluate(model, test.images, test.labels, batch_size=b).accuracy
            times[b].append(time.perf_counter() - start)
    for b, t in times.items():
        print(f"batch {b}: {min(t):.2f}-{max(t):.2f} s, test accuracy {accuracy[b]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
