"""Regenerate the pictures in docs/images from a trained run (the commands the docs show).

    .venv/bin/python docs/make_images.py RUN [--out docs/images] [--data-dir DIR]

Writes features-conv1.png (a 6 against a 9), features-conv2.png, filters-conv1.png, curves.png,
mistakes.png and predict.png (photo-like digits beside the 28×28 the network saw).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_cnn import cli
from mnist_cnn import inspect as insp
from mnist_cnn.checkpoint import load_model
from mnist_cnn.datasets import load_dataset
from mnist_cnn.photos import photo_like
from mnist_cnn.plotting import new_figure, save_figure
from mnist_cnn.predict import Prediction, predict_files


def _run(args: list[str]) -> None:
    code = cli.main(args)
    if code != 0:
        raise SystemExit(f"mnist-cnn {' '.join(args)} failed with status {code}")


def predict_picture(run: str, data_dir: str | None, out: Path, n: int = 6) -> None:
    """Photo-like test digits, then what ``predict`` made of each (input and top guess)."""
    model, _ = load_model(run)
    test = load_dataset("mnist", data_dir).test
    rng = np.random.default_rng(2)
    idx = rng.choice(len(test), size=n, replace=False)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in idx:
            path = Path(tmp) / f"photo-{i}.png"
            Image.fromarray(photo_like(test.images[i].numpy(), rng)).save(path)
            paths.append(path)
        photos = [np.asarray(Image.open(p)) for p in paths]
        results = predict_files(model, paths)
    fig = new_figure(1.6 * n, 3.6)
    axes = fig.subplots(2, n)
    for j, (photo, r) in enumerate(zip(photos, results, strict=True)):
        assert isinstance(r, Prediction)
        axes[0, j].imshow(photo, cmap="gray", vmin=0, vmax=255)
        axes[0, j].set_title(f"{photo.shape[1]}×{photo.shape[0]} photo", fontsize=8)
        axes[1, j].imshow(r.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        (c1, p1), (c2, p2) = r.top(2)
        axes[1, j].set_title(f"→ {c1} ({p1:.2f}); {c2} ({p2:.2f})", fontsize=8)
        for ax in axes[:, j]:
            ax.set_axis_off()
    fig.suptitle("predict: a photo-like digit (top) and the 28×28 the network saw (bottom)")
    save_figure(fig, out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--out", default=str(Path(__file__).parent / "images"))
    p.add_argument("--data-dir")
    args = p.parse_args()
    out = Path(args.out)
    data = ["--data-dir", args.data_dir] if args.data_dir else []

    _run(["features", args.run, *data, "-o", str(out / "features-conv1.png")])
    test = load_dataset("mnist", args.data_dir).test
    (six,) = insp.first_of_each(test, [6])
    _run(
        [
            "features",
            args.run,
            *data,
            "--index",
            str(six),
            "--layer",
            "conv2",
            "-o",
            str(out / "features-conv2.png"),
        ]
    )
    _run(["filters", args.run, "-o", str(out / "filters-conv1.png")])
    _run(["plot", args.run, "-o", str(out / "curves.png")])

    model, _ = load_model(args.run)
    probs = insp.predict_probabilities(model, test.images)
    mistakes = insp.confident_mistakes(probs, test.labels.numpy(), k=16)
    save_figure(insp.plot_mistakes(mistakes, test.images.numpy()), out / "mistakes.png")
    predict_picture(args.run, args.data_dir, out / "predict.png")
    for f in sorted(out.glob("*.png")):
        print(f"{f}  {f.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
