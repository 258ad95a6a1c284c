"""The not-a-digit score across several runs: how much it moves with the training (the seed, the
label smoothing, the recipe), each run with its own stored score and threshold.

Prints one row per run: its test accuracy, then the shares flagged of the MNIST test digits,
photo-like renderings of test digits (``mnist_cnn.photos.photo_like``) and the generated non-digit
sets of each ``--seeds`` (``tests/nondigits.py``; 0 and 1 are the design sets, 2 and 3 held out;
pictures refused as blank are counted as flagged, as benchmarks/digitness.py counts them).

``--gram`` adds, per run, the Gram-matrix deviations of Sastry & Oore (ICML 2020), computed from
the same run without retraining: for every layer's activations, the row sums of the Gram
matrices of their p-th powers (p = 1 to ``--powers``), compared with the range each took over
the training digits predicted as the same class; a picture's score is its summed excess over
those ranges, each layer's divided by its mean over the validation digits. Shown alone, per
layer, and fused with the stored score (the sum of the logs of both scores' validation ranks),
each at the threshold that flags ``OTHER_RATE`` (1.4%) of the validation digits.

    .venv/bin/python benchmarks/digitness_runs.py RUN [RUN ...] [--seeds 0 1 2 3] [-n 300] [--gram]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mnist_cnn import digitness as dg  # noqa: E402
from mnist_cnn.checkpoint import load_model  # noqa: E402
from mnist_cnn.datasets import load_dataset, to_float  # noqa: E402
from mnist_cnn.errors import MnistCnnError  # noqa: E402
from mnist_cnn.evaluate import evaluate  # noqa: E402
from mnist_cnn.photos import photo_like  # noqa: E402
from mnist_cnn.preprocess import ImageError, preprocess_image  # noqa: E402
from tests.nondigits import non_digit_pictures  # noqa: E402

BLOCK = 500  # images per forward pass
OTHER_RATE = 0.014  # share of validation the Gram scores and their fusion flag (docs)


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def gram_rows(
    model, images: torch.Tensor, powers: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per layer (N, powers, C): row sums of the Gram matrices of the activations' p-th powers
    (float64: the 10th power of an activation overflows float32's sums); predicted classes (N,)."""
    with torch.inference_mode():
        logits, acts = model(to_float(images), return_activations=True)
    out = {}
    for name, a in acts.items():
        if name == "logits":
            continue
        f = a.double().reshape(len(a), a.shape[1], -1)  # (N, C, positions); fc1: 1 position
        rows = []
        for p in range(1, powers + 1):
            g = (f**p @ (f**p).transpose(1, 2)).sum(2)
            rows.append(g.sign() * g.abs() ** (1 / p))
        out[name] = torch.stack(rows, 1)
    return out, logits.argmax(1)


class GramScore:
    """Each class's range of every Gram row sum over the training digits, then deviations."""

    def __init__(self, model, train: torch.Tensor, val: torch.Tensor, powers: int) -> None:
        self.model, self.powers = model, powers
        self.lo: dict[str, torch.Tensor] = {}
        self.hi: dict[str, torch.Tensor] = {}
        for s in range(0, len(train), BLOCK):
            rows, pred = gram_rows(model, train[s : s + BLOCK], powers)
            for name, v in rows.items():
                if name not in self.lo:
                    self.lo[name] = torch.full((10, *v.shape[1:]), torch.inf, dtype=v.dtype)
                    self.hi[name] = torch.full((10, *v.shape[1:]), -torch.inf, dtype=v.dtype)
                for c in pred.unique().tolist():
                    m = pred == c
                    self.lo[name][c] = torch.minimum(self.lo[name][c], v[m].min(0).values)
                    self.hi[name][c] = torch.maximum(self.hi[name][c], v[m].max(0).values)
        self.scale = self.deviations(val).mean(0) + 1e-12

    @property
    def layers(self) -> list[str]:
        return list(self.lo)

    def deviations(self, images: torch.Tensor) -> np.ndarray:
        """(N, layers): summed excess over the class's training range, relative to its bound."""
        out = []
        for s in range(0, len(images), BLOCK):
            rows, pred = gram_rows(self.model, images[s : s + BLOCK], self.powers)
            cols = []
            for name, v in rows.items():
                lo, hi = self.lo[name][pred], self.hi[name][pred]
                below = (lo - v).clamp(min=0) / (lo.abs() + 1e-6)
                d = below + (v - hi).clamp(min=0) / (hi.abs() + 1e-6)
                cols.append(d.sum((1, 2)))
            out.append(torch.stack(cols, 1))
        return torch.cat(out).numpy()


def log_ranks(val: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """log of each score's rank among the validation scores (higher: more digit-like)."""
    ordered = np.sort(val)
    return np.log((np.searchsorted(ordered, scores, side="right") + 0.5) / (len(ordered) + 1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument(
        "-n", type=at_least_one, default=300, help="photo-like digits and non-digits per seed"
    )
    p.add_argument("--data-dir")
    p.add_argument("--gram", action="store_true", help="also Gram-matrix deviations, and fused")
    p.add_argument("--powers", type=at_least_one, default=10, help="Gram powers p = 1..POWERS (10)")
    args = p.parse_args()
    if os.environ.get("MNIST_CNN_DRY_RUN"):  # the docs test: arguments only
        print(f"would score {len(args.runs)} run(s) on non-digit seeds {args.seeds}")
        return 0
    try:
        data = load_dataset("mnist", args.data_dir, download=False)
        models = {run: load_model(run)[0].eval() for run in args.runs}
    except MnistCnnError as err:  # no MNIST, no such run, a damaged model file: one line
        print(f"digitness_runs: {err}", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    sets = {"test": data.test.images,
            "photo": torch.as_tensor(np.stack([preprocess_image(photo_like(d.numpy(), rng))
                                               for d in data.test.images[: args.n]]))}  # fmt: skip
    refused = {}
    for seed in args.seeds:
        pictures, blank = [], 0
        for _, picture in non_digit_pictures(args.n, seed=seed):
            try:
                pictures.append(preprocess_image(picture))
            except ImageError:  # refused as blank: counted as flagged
                blank += 1
        sets[f"non-digits {seed}"] = torch.as_tensor(np.stack(pictures))
        refused[f"non-digits {seed}"] = blank
    names = list(sets)
    print("run | test accuracy | " + " | ".join(names) + "  (shares flagged, %)")

    def row(label: str, scores: dict[str, np.ndarray], threshold: float) -> None:
        cells = []
        for name in names:
            flagged = int((scores[name] < threshold).sum()) + refused.get(name, 0)
            cells.append(f"{100 * flagged / (len(scores[name]) + refused.get(name, 0)):.1f}")
        print(f"{label} | " + " | ".join(cells), flush=True)

    for run, model in models.items():
        scorer = dg.scorer_for_run(run, model, data_dir=args.data_dir)
        accuracy = evaluate(
            model, data.test.images, data.test.labels, measure_memory=False
        ).accuracy
        knn = {name: scorer.scores(model, images) for name, images in sets.items()}
        row(f"{run} | {accuracy:.4f}", knn, scorer.threshold)
        if not args.gram:
            continue
        gram = GramScore(model, data.train.images, data.val.images, args.powers)
        scored = {"val": data.val.images, **sets}
        dev = {name: gram.deviations(images) for name, images in scored.items()}

        def at_rate(label: str, scores: dict[str, np.ndarray]) -> None:
            row(f"  {label} | -", scores, float(np.quantile(scores["val"], OTHER_RATE)))

        total = {name: -(d / gram.scale).sum(1) for name, d in dev.items()}
        at_rate("Gram, all layers", total)
        for i, layer in enumerate(gram.layers):
            at_rate(f"Gram, {layer}", {name: -d[:, i] for name, d in dev.items()})
        knn["val"] = scorer.scores(model, data.val.images)
        fused = {name: log_ranks(knn["val"], knn[name]) + log_ranks(total["val"], total[name])
                 for name in total}  # fmt: skip
        at_rate("stored score + Gram, log ranks summed", fused)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
