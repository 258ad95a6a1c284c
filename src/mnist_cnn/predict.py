"""Classify people's own pictures of digits: read, preprocess as MNIST was, run the network.

A file that cannot be used (not an image, empty, damaged, huge, a blank page) becomes a
:class:`Failure` carrying a one-line reason; the other files are still classified.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .datasets import to_float
from .digitness import DigitScorer
from .fileio import atomic_path
from .preprocess import ImageError, load_image, preprocess_image

# Extensions picked up when a folder is given; single files are tried whatever their name.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}
)


@dataclass(frozen=True)
class Prediction:
    """What the network made of one picture."""

    source: str
    probabilities: np.ndarray  # (classes,) softmax
    image: np.ndarray  # (28, 28) uint8: what the network saw
    classes: tuple[str, ...]
    digit_score: float | None = None  # how digit-like (mnist_cnn.digitness); None: not checked
    not_a_digit: bool | None = None  # the score is below the run's threshold

    @property
    def digit(self) -> int:
        """The predicted class index."""
        return int(np.argmax(self.probabilities))

    @property
    def label(self) -> str:
        """The predicted class name ('7' for MNIST)."""
        return self.classes[self.digit]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes as (name, probability), most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.classes[i], float(self.probabilities[i])) for i in order]

    def to_dict(self, k: int = 3) -> dict[str, Any]:
        return {
            "file": self.source,
            "prediction": self.label,
            "probability": float(self.probabilities[self.digit]),
            "top": [{"class": c, "probability": p} for c, p in self.top(k)],
            "digit_score": self.digit_score,
            "not_a_digit": self.not_a_digit,
        }


@dataclass(frozen=True)
class Failure:
    """A file that could not be classified, and why (one line)."""

    source: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.source, "error": self.message}


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; a folder becomes its image files (by extension), sorted by name."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(
                sorted(
                    f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        else:
            out.append(path)
    return out


def classify(model: nn.Module, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, classes) for preprocessed uint8 (N, 28, 28) images."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = to_float(
                    torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
                )
                out.append(torch.softmax(model(x.to(device)).float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def _classified(
    model: nn.Module,
    names: Sequence[str],
    arrays: Sequence[np.ndarray | Failure],
    classes: Sequence[str] | None,
    scorer: DigitScorer | None = None,
) -> list[Prediction | Failure]:
    ready = [i for i, a in enumerate(arrays) if not isinstance(a, Failure)]
    results: list[Prediction | Failure] = list(arrays)  # type: ignore[arg-type]
    if ready:
        batch = np.stack([arrays[i] for i in ready])
        probs = classify(model, batch)
        n = probs.shape[1]
        names_of = tuple(classes) if classes is not None else tuple(str(k) for k in range(n))
        scores = scorer.scores(model, batch) if scorer is not None else [None] * len(ready)
        for i, p, score in zip(ready, probs, scores, strict=True):
            flag = None if score is None else bool(score < scorer.threshold)  # type: ignore[union-attr]
            results[i] = Prediction(
                names[i],
                p,
                arrays[i],  # type: ignore[arg-type]
                names_of,
                None if score is None else float(score),
                flag,
            )
    return results


def predict_images(
    model: nn.Module,
    images: Sequence[Image.Image | np.ndarray],
    *,
    names: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    invert: bool | None = None,
    scorer: DigitScorer | None = None,
) -> list[Prediction | Failure]:
    """Preprocess pictures (Pillow images or 2-D arrays) and classify them; one result each."""
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    arrays: list[np.ndarray | Failure] = []
    for name, img in zip(names, images, strict=True):
        try:
            arrays.append(preprocess_image(img, invert=invert))
        except ImageError as err:
            arrays.append(Failure(name, f"{name}: {err}"))
    return _classified(model, names, arrays, classes, scorer)


def predict_files(
    model: nn.Module,
    paths: Sequence[str | os.PathLike[str]],
    *,
    classes: Sequence[str] | None = None,
    invert: bool | None = None,
    scorer: DigitScorer | None = None,
) -> list[Prediction | Failure]:
    """Classify image files (folders expand to their images); one result per file, in order.

    Each picture is reduced to its 28×28 as soon as it is read, so a folder of large photos
    never sits in memory at once.
    """
    names = [str(f) for f in expand_paths(paths)]
    arrays: list[np.ndarray | Failure] = []
    for name in names:
        try:
            arrays.append(preprocess_image(load_image(name), invert=invert))
        except ImageError as err:
            message = str(err)
            arrays.append(Failure(name, message if message.startswith(name) else f"{name}: {err}"))
    return _classified(model, names, arrays, classes, scorer)


def save_preprocessed(
    results: Sequence[Prediction | Failure], folder: str | os.PathLike[str]
) -> list[Path]:
    """Write each prediction's 28×28 input as ``<folder>/<file stem>.png`` (made unique)."""
    folder = Path(folder)
    written: list[Path] = []
    used: set[str] = set()
    for r in results:
        if not isinstance(r, Prediction):
            continue
        stem = Path(r.source).stem or "image"
        name, k = f"{stem}.png", 1
        while name in used:
            k += 1
            name = f"{stem}-{k}.png"
        used.add(name)
        with atomic_path(folder / name) as tmp:
            Image.fromarray(r.image).save(tmp, format="PNG")
        written.append(folder / name)
    return written
