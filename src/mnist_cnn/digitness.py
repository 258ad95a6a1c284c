"""How digit-like is a picture? A score from the trained network, and a threshold for "not sure
this is a digit", calibrated without retraining.

The score is the cosine similarity of the picture's ``fc1`` features to their nearest neighbour
(the ``K``-th nearest: K = 1) among the features of every training digit: a digit lands among
digits; a letter, a scribble or a shoe lands far from all of them. The picture is scored as it
is and moved by ``SHIFT`` pixel each way, and the best of the five counts: a digit of an unseen
hand placed a pixel off finds its neighbours that way, which lets the threshold sit higher,
where more letters and symbols fall below it. To keep 55,000 references small and quick to
search, the unit feature vectors are projected onto their ``DIMS`` leading directions (the top
eigenvectors of the training features' uncentred second-moment matrix: centring would throw away
the direction that tells blank paper from ink) and renormalised; 55,000 × 128 float16 is 14 MB,
and searching them costs about a third of a picture's forward pass. Chosen by measurement over
the maximum softmax probability, the energy (log-sum-exp of the logits), a class-conditional
Gaussian (Mahalanobis distance), fewer references, other layers (pool2, pixels), rank
combinations with the energy, references moved or distorted, and a head trained to tell
digits from turned and mixed digits; see docs/inspect.md.

The threshold is the ``VAL_QUANTILE`` quantile of the validation split's scores, each validation
digit scored by its ``K + VAL_SKIP``-th neighbour instead of its ``K``-th. A validation digit comes
from a writer whose other digits are among the references, and its nearest reference is often
one of them, closer than a digit of an unseen hand finds: scored by the nearest, the validation
digits' scores sat high, and the share of unseen (test) digits flagged ran from 1.0 to 1.8 times
the share of validation flagged, depending on the network. Skipping one neighbour for them puts
the threshold where 1.5-1.8% of test digits fall below it on every network measured
(docs/inspect.md). All are stored in the run folder as ``digitness.safetensors`` (references
float16, projection float32, threshold and settings in its metadata), computed on first use and
written atomically; it is recomputed if the model file changes, the file is of an older format
or its threshold was set by another rule.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import model_file
from .datasets import MNISTLike, load_dataset, to_float
from .errors import CheckpointError, ConfigError, DataError
from .fileio import atomic_path

log = logging.getLogger(__name__)

DIGITNESS_FILE = "digitness.safetensors"
# 1: 5,000 unprojected references, K = 10; 2: all of them projected, K = 5, no shifts;
# 3: validation scored as any picture is (its nearest neighbour), 1.4% of it flagged
FORMAT = "mnist-cnn-digitness-4"
REFERENCES: int | None = None  # training digits whose features are kept (None: all of them)
DIMS = 128  # projected feature dimensions kept per reference
K = 1  # the neighbour whose similarity is the score
SHIFT = 1  # the picture is also scored moved by this many pixels each way; the best counts
MAX_SHIFT = 4  # a stored file asking for more is not ours (MNIST's digits have a 4 px margin)
VAL_QUANTILE = 0.022  # of the validation digits' scores (see VAL_SKIP): ≤ 2% of unseen digits
VAL_SKIP = 1  # validation digits are scored by their (K + VAL_SKIP)-th nearest reference
SCORE_IMAGES = 1_000  # pictures per scoring block: 5,000 fc1 rows of the seed network, 20 MB
CHUNK = 500  # images per forward pass
SCORE_CHUNK = 256  # pictures scored at once: a (256, 55,000) float32 similarity block is 56 MB
MAX_REFERENCES = 100_000  # a stored file with more rows is not ours
MAX_FEATURES = 65_536  # nor one whose projection reads wider features


@dataclass(frozen=True)
class DigitScorer:
    """Reference features (unit rows, float16), the projection that made them, and the
    threshold below which a picture is flagged as probably not a digit."""

    references: torch.Tensor  # (R, d) float16, unit rows
    threshold: float
    k: int = K
    projection: torch.Tensor | None = None  # (D, d) float32: fc1 width D -> d; None: d = D
    shift: int = SHIFT  # pixels; 0: the picture as it is only
    _refs: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # float32 once, not per call: the server scores every drawing.
        object.__setattr__(self, "_refs", self.references.float())

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Unit vectors (N, d) of fc1 features (N, D), in the references' space."""
        x = F.normalize(features.float(), dim=1)
        if self.projection is not None:
            x = F.normalize(x @ self.projection, dim=1)
        return x

    def scores_of_features(self, features: torch.Tensor) -> np.ndarray:
        """Scores (N,) in [-1, 1] for fc1 features (N, D): higher is more digit-like."""
        x = self.embed(features)
        out = []
        for s in range(0, len(x), SCORE_CHUNK):  # (SCORE_CHUNK, R) at a time: bounded memory
            sim = x[s : s + SCORE_CHUNK] @ self._refs.T
            out.append(sim.topk(min(self.k, len(self._refs)), dim=1).values[:, -1])
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def scores(self, model: nn.Module, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Scores (N,) for uint8 (N, 28, 28) images: the best of the picture as it is and
        moved by ``shift`` pixels left, right, up and down (a digit written a pixel off its
        centre of mass still lands among digits; a letter rarely does)."""
        images = torch.as_tensor(np.asarray(images))
        out = []
        for s in range(0, len(images), SCORE_IMAGES):
            block = images[s : s + SCORE_IMAGES]
            sc = self.scores_of_features(features(model, shifted_views(block, self.shift)))
            out.append(sc.reshape(-1, len(block)).max(axis=0))  # (views, N): the best view
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is below the threshold: probably not a digit."""
        return np.asarray(scores) < self.threshold


def shifted_views(images: torch.Tensor, shift: int) -> torch.Tensor:
    """(V * N, H, W): the N images as they are, then moved ``shift`` pixels right, left, down
    and up (V = 5; V = 1 when ``shift`` is 0), the uncovered edge blank (0), view by view."""
    if shift == 0:
        return images
    n, h, w = images.shape
    pad = F.pad(images, (shift, shift, shift, shift))
    views = [images]
    for dy, dx in ((0, shift), (0, -shift), (shift, 0), (-shift, 0)):
        views.append(pad[:, shift - dy : shift - dy + h, shift - dx : shift - dx + w])
    return torch.cat(views)


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


def leading_directions(units: torch.Tensor, dims: int) -> torch.Tensor:
    """(D, min(dims, D)) float32: the top eigenvectors of ``units``' uncentred second-moment
    matrix (N, D) -> (D, D), i.e. the subspace that keeps most of the rows' length, so that
    cosine similarities survive the projection. Eigenvector signs do not change cosines."""
    x = units.float()
    # float32: LAPACK's float64 eigensolver is 15-40x slower on a busy 2-core CPU, and the
    # projection need not be exact (references and queries go through the same one).
    _, vectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
    return vectors[:, -min(dims, x.shape[1]) :].flip(1).contiguous()


def calibrate(
    model: nn.Module,
    data: MNISTLike,
    *,
    references: int | None = REFERENCES,
    dims: int = DIMS,
    k: int = K,
    shift: int = SHIFT,
) -> DigitScorer:
    """References from the first ``references`` training digits (None: all), projected onto
    their ``dims`` leading directions; the threshold from the validation split, scored with
    its shifted views as any picture is, but by the ``k + VAL_SKIP``-th neighbour."""
    if not (references is None or references >= 1) or dims < 1 or k < 1:
        raise ConfigError(
            f"references, dims and k must be at least 1, got {references}, {dims}, {k}"
        )
    if not 0 <= shift <= MAX_SHIFT:
        raise ConfigError(f"shift must be 0 to {MAX_SHIFT} pixels, got {shift}")
    units = F.normalize(features(model, data.train.images[:references]), dim=1)
    if len(units) == 0 or len(data.val.images) == 0:
        raise DataError("cannot calibrate the not-a-digit check: no training or validation images")
    projection = leading_directions(units, dims)
    refs = F.normalize(units @ projection, dim=1).half()
    # Validation digits past their nearest VAL_SKIP references: their writers' other digits
    # are among the references, an unseen writer's are not (see the module's docstring).
    past = DigitScorer(refs, threshold=0.0, k=k + VAL_SKIP, projection=projection, shift=shift)
    val = past.scores(model, data.val.images)
    return DigitScorer(refs, float(np.quantile(val, VAL_QUANTILE)), k, projection, shift)


def _model_digest(run: str | os.PathLike[str]) -> str:
    return hashlib.sha256(model_file(run).read_bytes()).hexdigest()


def _store(path: Path, scorer: DigitScorer, digest: str) -> None:
    from safetensors.torch import save_file

    meta = {
        "format": FORMAT,
        "threshold": repr(scorer.threshold),
        "k": str(scorer.k),
        "shift": str(scorer.shift),
        "references": str(len(scorer.references)),
        "val_quantile": repr(VAL_QUANTILE),
        "val_skip": str(VAL_SKIP),
        "model_sha256": digest,
    }
    with atomic_path(path) as tmp:
        projection = scorer.projection
        if projection is None:  # stored as what it is: the identity
            projection = torch.eye(scorer.references.shape[1])
        tensors = {"references": scorer.references.contiguous(), "projection": projection}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


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
            rule = (repr(VAL_QUANTILE), str(VAL_SKIP))
            if (meta.get("val_quantile"), meta.get("val_skip")) != rule:
                return None  # a threshold set by another rule
            if set(f.keys()) != {"references", "projection"}:
                return None
            rows, dims = _shape(f, "references")
            width, out = _shape(f, "projection")
            # Sizes checked before anything is read into memory.
            if not (1 <= rows <= MAX_REFERENCES and 1 <= dims == out <= width <= MAX_FEATURES):
                return None
            refs, projection = f.get_tensor("references"), f.get_tensor("projection")
        threshold, k, shift = float(meta["threshold"]), int(meta["k"]), int(meta["shift"])
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):
        return None  # damaged or not ours: calibrate afresh
    if refs.dtype != torch.float16 or projection.dtype != torch.float32:
        return None
    if not (torch.isfinite(refs).all() and torch.isfinite(projection).all()):
        return None  # a NaN scores every picture NaN, and a NaN is never below the threshold
    if not np.isfinite(threshold) or not 1 <= k <= len(refs) or not 0 <= shift <= MAX_SHIFT:
        return None
    return DigitScorer(refs, threshold, k, projection, shift)


def _shape(f, name: str) -> tuple[int, int]:
    """A stored tensor's (rows, columns); ValueError unless it has two dimensions."""
    shape = f.get_slice(name).get_shape()
    if len(shape) != 2:
        raise ValueError(f"{name}: {len(shape)} dimensions")
    return int(shape[0]), int(shape[1])


def stored_scorer(run: str | os.PathLike[str]) -> DigitScorer | None:
    """The scorer stored in RUN's folder for its current model, or None: never calibrates."""
    path = model_file(run)
    return _read(path.parent / DIGITNESS_FILE, _model_digest(run))


def scorer_for_run(
    run: str | os.PathLike[str],
    model: nn.Module,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    dataset: str = "mnist",
    data: MNISTLike | None = None,
    on_calibrate: Callable[[str], None] | None = None,
) -> DigitScorer:
    """The run's scorer: read from ``RUN/digitness.safetensors``, or calibrated on the run's
    dataset (training and validation splits; ``data`` if given, already loaded) and stored
    there. ``on_calibrate(message)`` is told before a calibration starts (a pass over all
    those digits: the first use of a run can take a minute on a CPU). Raises MnistCnnError
    (DataError) when it must be calibrated and the dataset is not available."""
    folder = model_file(run).parent
    digest = _model_digest(run)
    stored = _read(folder / DIGITNESS_FILE, digest)
    width = getattr(getattr(model, "fc1", None), "out_features", None)
    projection = stored.projection if stored is not None else None
    if projection is not None and width is not None and projection.shape[0] != width:
        stored = None  # made for features of another width: not usable with this model
    if stored is not None:
        return stored
    if data is None:
        data = load_dataset(dataset, data_dir, download=False)
    if on_calibrate is not None:
        on_calibrate(
            f"calibrating the digit check on the {len(data.train) + len(data.val):,} training "
            f"and validation images of {data.name} (once for this model; kept in "
            f"{folder / DIGITNESS_FILE})"
        )
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
    on_calibrate: Callable[[str], None] | None = None,
) -> DigitScorer | None:
    """:func:`scorer_for_run`, or None (with a warning) when it cannot be had."""
    from .errors import MnistCnnError

    try:
        return scorer_for_run(
            run, model, data_dir=data_dir, dataset=dataset, on_calibrate=on_calibrate
        )
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
