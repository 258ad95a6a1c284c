"""How digit-like is a picture? A score from the trained network, and a threshold for "not sure
this is a digit", calibrated without retraining.

The score is the cosine similarity of the picture's ``fc1`` features to their ``K``-th nearest
neighbour among the features of ``REFERENCES`` training digits: a digit lands among digits; a
letter, a scribble or a shoe lands far from all of them. Chosen by measurement over the maximum
softmax probability, the energy (log-sum-exp of the logits) and a class-conditional Gaussian
(Mahalanobis distance) on the same features; see docs/inspect.md.

The threshold is the ``VAL_FLAG_RATE`` quantile of the validation split's scores, so that about
that share of real digits is flagged. Both are stored in the run folder as
``digitness.safetensors`` (references as float16, threshold and settings in its metadata),
computed on first use and written atomically; it is recomputed if the model file changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import model_file
from .datasets import MNISTLike, load_dataset, to_float
from .errors import CheckpointError
from .fileio import atomic_path

log = logging.getLogger(__name__)

DIGITNESS_FILE = "digitness.safetensors"
FORMAT = "mnist-cnn-digitness-1"
REFERENCES = 5000  # training digits whose features are kept (the first ones: deterministic)
K = 10  # the neighbour whose similarity is the score
VAL_FLAG_RATE = 0.015  # share of validation digits flagged: ≤ 2% of unseen digits, with margin
CHUNK = 500  # images per forward pass
MAX_REFERENCES = 100_000  # a stored file with more rows is not ours


@dataclass(frozen=True)
class DigitScorer:
    """Reference features (unit rows, float16) and the threshold below which a picture is
    flagged as probably not a digit."""

    references: torch.Tensor  # (R, D) float16
    threshold: float
    k: int = K

    def scores_of_features(self, features: torch.Tensor) -> np.ndarray:
        """Scores (N,) in [-1, 1] for fc1 features (N, D): higher is more digit-like."""
        x = F.normalize(features.float(), dim=1)
        refs = self.references.float()
        out = []
        for s in range(0, len(x), CHUNK):  # (CHUNK, R) similarities at a time: bounded memory
            sim = x[s : s + CHUNK] @ refs.T
            out.append(sim.topk(min(self.k, len(refs)), dim=1).values[:, -1])
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def scores(self, model: nn.Module, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Scores (N,) for uint8 (N, 28, 28) images."""
        return self.scores_of_features(features(model, images))

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is below the threshold: probably not a digit."""
        return np.asarray(scores) < self.threshold


def features(model: nn.Module, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """fc1 activations (N, D) float32 on the CPU for uint8 (N, 28, 28) images (eval mode)."""
    images = torch.as_tensor(np.asarray(images))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for s in range(0, len(images), CHUNK):
                _, acts = model(to_float(images[s : s + CHUNK].to(device)), return_activations=True)
                out.append(acts["fc1"].float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def calibrate(model: nn.Module, data: MNISTLike) -> DigitScorer:
    """References from the first ``REFERENCES`` training digits; the threshold from validation."""
    refs = F.normalize(features(model, data.train.images[:REFERENCES]), dim=1).half()
    partial = DigitScorer(refs, threshold=0.0)
    val = partial.scores_of_features(features(model, data.val.images))
    return DigitScorer(refs, threshold=float(np.quantile(val, VAL_FLAG_RATE)))


def _model_digest(run: str | os.PathLike[str]) -> str:
    return hashlib.sha256(model_file(run).read_bytes()).hexdigest()


def _store(path: Path, scorer: DigitScorer, digest: str) -> None:
    from safetensors.torch import save_file

    meta = {
        "format": FORMAT,
        "threshold": repr(scorer.threshold),
        "k": str(scorer.k),
        "val_flag_rate": repr(VAL_FLAG_RATE),
        "model_sha256": digest,
    }
    with atomic_path(path) as tmp:
        save_file({"references": scorer.references.contiguous()}, str(tmp), metadata=meta)


def _read(path: Path, digest: str) -> DigitScorer | None:
    """The stored scorer, or None if absent, for another model, or not a valid file."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("model_sha256") != digest:
                return None
            if set(f.keys()) != {"references"}:
                return None
            shape = f.get_slice("references").get_shape()
            if len(shape) != 2 or not 1 <= shape[0] <= MAX_REFERENCES:
                return None
            refs = f.get_tensor("references")
        threshold, k = float(meta["threshold"]), int(meta["k"])
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):
        return None  # damaged or not ours: calibrate afresh
    if refs.dtype != torch.float16 or not np.isfinite(threshold) or not 1 <= k <= len(refs):
        return None
    return DigitScorer(refs, threshold, k)


def scorer_for_run(
    run: str | os.PathLike[str],
    model: nn.Module,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    dataset: str = "mnist",
) -> DigitScorer:
    """The run's scorer: read from ``RUN/digitness.safetensors``, or calibrated on the run's
    dataset (training and validation splits) and stored there. Raises MnistCnnError (DataError)
    when it must be calibrated and the dataset is not available."""
    path = model_file(run)
    folder = path.parent
    digest = _model_digest(run)
    stored = _read(folder / DIGITNESS_FILE, digest)
    if stored is not None:
        return stored
    data = load_dataset(dataset, data_dir, download=False)
    scorer = calibrate(model, data)
    try:
        _store(folder / DIGITNESS_FILE, scorer, digest)
    except OSError as err:  # a read-only run folder: use it, just do not keep it
        log.warning("cannot store %s in %s: %s", DIGITNESS_FILE, folder, err)
    return scorer


def optional_scorer(
    run: str | os.PathLike[str],
    model: nn.Module,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    dataset: str = "mnist",
) -> DigitScorer | None:
    """:func:`scorer_for_run`, or None (with a warning) when it cannot be had."""
    from .errors import MnistCnnError

    try:
        return scorer_for_run(run, model, data_dir=data_dir, dataset=dataset)
    except (MnistCnnError, CheckpointError) as err:
        log.warning("no digit-likeness check: %s", err)
        return None


def auroc(digits: np.ndarray, others: np.ndarray) -> float:
    """Area under the ROC curve of telling ``digits`` (higher scores) from ``others``: the
    chance that a random digit scores above a random other picture (ties count half)."""
    digits, others = np.asarray(digits, np.float64), np.asarray(others, np.float64)
    both = np.concatenate([digits, others])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # 1-based ranks, ties averaged
    n, m = len(digits), len(others)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


@dataclass(frozen=True)
class OodResult:
    """How well the score tells a run's test digits from another dataset's test images."""

    dataset: str
    auroc: float
    flagged: float  # share of the other dataset's images flagged as not digits
    digits_flagged: float  # share of the run's own test digits flagged
    threshold: float
    images: int

    def to_dict(self) -> dict[str, float | int | str]:
        return dict(self.__dict__)


def evaluate_ood(
    run: str | os.PathLike[str],
    ood: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    ood_data_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    limit: int | None = None,
) -> OodResult:
    """AUROC and shares flagged: the run's test split against ``ood``'s test split (e.g.
    Fashion-MNIST), at the stored threshold. ``limit``: only the first images of each."""
    from .checkpoint import load_model
    from .device import select_device
    from .rundir import run_dataset_name

    model, meta = load_model(run, select_device(device))
    own = run_dataset_name(run, meta)
    scorer = scorer_for_run(run, model, data_dir=data_dir, dataset=own)
    digits = load_dataset(own, data_dir, download=False).test.images[:limit]
    others = load_dataset(ood, ood_data_dir or data_dir, download=False).test.images[:limit]
    d, o = scorer.scores(model, digits), scorer.scores(model, others)
    return OodResult(
        dataset=ood,
        auroc=auroc(d, o),
        flagged=float(scorer.flags(o).mean()),
        digits_flagged=float(scorer.flags(d).mean()),
        threshold=scorer.threshold,
        images=len(others),
    )
