"""The not-a-digit score of several trained networks fused: does a second opinion help?

Each run's stored score (``RUN/digitness.safetensors``, calibrated on first use: fc1, nearest
training digit, 5 views) is turned into its rank among that run's validation digits' scores
(scored past their nearest reference, as the library sets its threshold); the fused score is
the sum of the ranks' logs. Prints, for each run alone, the first run with each other one, the
first with all others, and the others without the first: the shares flagged of MNIST's test
digits, 600 photo-like renderings of test digits and the generated non-digit sets 0 and 1
(design) and 2 and 3 (held out), 300 pictures each (``tests/nondigits.py``; pictures refused as
blank counted as flagged), at two thresholds: the library's rule (the ``VAL_QUANTILE`` quantile
of the validation scores) and, for a fair comparison, the one that flags ``--test-rate`` of the
test digits (never used to choose anything).

    .venv/bin/python benchmarks/digitness_ensemble.py RUN OTHER [OTHER ...] [--test-rate 0.019]

The library keeps one network's score: this measures what training more networks would buy.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mnist_cnn import digitness as dg  # noqa: E402
from mnist_cnn.checkpoint import load_model  # noqa: E402
from mnist_cnn.datasets import load_dataset  # noqa: E402
from mnist_cnn.errors import MnistCnnError  # noqa: E402
from mnist_cnn.photos import photo_like  # noqa: E402
from mnist_cnn.preprocess import ImageError, preprocess_image  # noqa: E402
from tests.nondigits import non_digit_pictures  # noqa: E402

PHOTOS = 600
PER_SET = 300


def non_digits(seeds: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """Preprocessed pictures (N, 28, 28) uint8 and which of them were refused as blank (N,)."""
    pictures, refused = [], []
    for seed in seeds:
        for _, picture in non_digit_pictures(PER_SET, seed=seed):
            try:
                pictures.append(preprocess_image(picture))
                refused.append(False)
            except ImageError:  # blank: flagged whatever the score (a zero picture stands in)
                pictures.append(np.zeros((28, 28), np.uint8))
                refused.append(True)
    return torch.as_tensor(np.stack(pictures)), np.array(refused)


def log_ranks(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each score as the log of its rank among the validation digits' (0, 1]."""
    val = np.sort(scores["val"])
    return {
        name: np.log((np.searchsorted(val, s, side="right") + 0.5) / (len(val) + 1))
        for name, s in scores.items()
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="the run, then the networks fused with it")
    p.add_argument("--data-dir")
    p.add_argument("--test-rate", type=float, default=0.019)
    args = p.parse_args()
    if len(args.runs) < 2:
        p.error("give at least two runs")
    try:
        data = load_dataset("mnist", args.data_dir, download=False)
        models = {run: load_model(run)[0].eval() for run in args.runs}
    except MnistCnnError as err:
        print(f"digitness_ensemble: {err}", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    photos = [preprocess_image(photo_like(d.numpy(), rng)) for d in data.test.images[:PHOTOS]]
    design, design_blank = non_digits([0, 1])
    held, held_blank = non_digits([2, 3])
    sets = {
        "test": data.test.images,
        "photo": torch.as_tensor(np.stack(photos)),
        "design": design,
        "held": held,
    }
    blank = {"design": design_blank, "held": held_blank}

    ranks = {}
    for run, model in models.items():
        scorer = dg.scorer_for_run(run, model)
        past = dataclasses.replace(scorer, k=scorer.k + dg.VAL_SKIP)
        scores = {"val": past.scores(model, data.val.images)}
        scores |= {name: scorer.scores(model, images) for name, images in sets.items()}
        ranks[run] = log_ranks(scores)

    def share(scores: np.ndarray, name: str, threshold: float) -> float:
        flagged = scores < threshold
        if name in blank:
            flagged |= blank[name]
        return 100 * float(flagged.mean())

    def show(label: str, runs: list[str]) -> None:
        fused = {name: sum(ranks[r][name] for r in runs) for name in ranks[runs[0]]}
        t = np.quantile(fused["val"], dg.VAL_QUANTILE)
        u = np.quantile(fused["test"], args.test_rate)
        print(
            f"{label}\n    rule: test {share(fused['test'], 'test', t):.2f}%, photo-like "
            f"{share(fused['photo'], 'photo', t):.1f}%, non-digits design "
            f"{share(fused['design'], 'design', t):.1f}%, held out "
            f"{share(fused['held'], 'held', t):.1f}% | at test {100 * args.test_rate:g}%: "
            f"photo-like {share(fused['photo'], 'photo', u):.1f}%, design "
            f"{share(fused['design'], 'design', u):.1f}%, held out "
            f"{share(fused['held'], 'held', u):.1f}%",
            flush=True,
        )

    first, others = args.runs[0], args.runs[1:]
    print(f"{len(design)} design and {len(held)} held-out non-digits, {PHOTOS} photo-like digits")
    for run in args.runs:
        show(run, [run])
    for run in others:
        show(f"{first} + {run}", [first, run])
    if len(others) > 1:
        show(f"{first} + all {len(others)} others", args.runs)
        show(f"the {len(others)} others without {first}", others)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
