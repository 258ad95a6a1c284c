"""Look inside a trained network: feature maps, filters, training curves, confusion, mistakes.

Every function returns arrays or a ``matplotlib.figure.Figure``; nothing is written unless a
caller saves it (:func:`mnist_cnn.plotting.save_figure`). Feature maps are read from the model's
own forward pass (``model(x, return_activations=True)``), so the pictures show exactly what
prediction computed.

Grayscale conventions (the same in every picture):

- inputs: 0 → black, 1 → white, white ink on black as the network sees it;
- feature maps: black is 0 (a ReLU that is off); white is the map's own maximum
  (``scale="map"``, the default: every channel's pattern is visible, even a weak one) or the
  largest activation anywhere in the figure (``scale="shared"``: channels and digits can be
  compared by strength, weak channels fade to black);
- filters: mid-gray is a zero weight, white positive, black negative, on one symmetric scale per
  picture so that strong and weak kernels can be told apart.

This module is imported as ``mnist_cnn.inspect``; it does not replace the standard library's
``inspect`` anywhere else.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .datasets import IMAGE_SIZE, Split, to_float
from .errors import ConfigError, MnistCnnError
from .plotting import DPI, GRAY, new_figure, save_figure
from .rundir import CURVES_FILE, METRICS_FILE, RunDir

if TYPE_CHECKING:  # the drawing functions import matplotlib when they run (see plotting.py)
    from matplotlib.figure import Figure

# Activations that are stacks of 2-D maps; conv3 only in a network with a third stage.
MAP_LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3")
FILTER_LAYERS = ("conv1", "conv2", "conv3")
SCALES = ("map", "shared")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Digit:
    """One input picture: 28×28 uint8, white on black, with a name and (if known) its label."""

    image: np.ndarray
    name: str
    label: int | None = None


def split_digits(split: Split, indices: Sequence[int]) -> list[Digit]:
    """Digits ``indices`` of a dataset split, labelled."""
    n = len(split)
    out = []
    for i in indices:
        if not -n <= i < n:
            raise MnistCnnError(f"index {i} is outside the {split.name} split (0..{n - 1})")
        i = i % n
        out.append(Digit(split.images[i].numpy(), f"{split.name} #{i}", int(split.labels[i])))
    return out


def first_of_each(split: Split, labels: Sequence[int]) -> list[int]:
    """The index of the first image of each label in ``labels`` (e.g. a 6 and a 9)."""
    found = []
    for label in labels:
        hits = torch.nonzero(split.labels == label).flatten()
        if len(hits) == 0:
            raise MnistCnnError(f"no image of class {label} in the {split.name} split")
        found.append(int(hits[0]))
    return found


def _as_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 or float in [0, 1] -> float32 (N, 28, 28) in [0, 1]."""
    t = torch.as_tensor(np.asarray(images))
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or tuple(t.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise MnistCnnError(f"expected 28×28 images, got shape {tuple(t.shape)}")
    return to_float(t) if t.dtype == torch.uint8 else t.to(torch.float32)


# --------------------------------------------------------------------------- feature maps


@dataclass(frozen=True)
class FeatureMaps:
    """One layer's activations for some digits, with what the network made of each digit."""

    layer: str
    digits: tuple[Digit, ...]
    inputs: np.ndarray  # (N, 28, 28) float32 in [0, 1]: what the network was fed
    maps: np.ndarray  # (N, C, H, W) float32: the layer's activations, from the model's forward
    probabilities: np.ndarray  # (N, classes) softmax of the logits


def feature_maps(model: nn.Module, digits: Sequence[Digit], layer: str = "conv1") -> FeatureMaps:
    """Run the model on ``digits`` and keep ``layer``'s activations (eval mode, no gradients)."""
    if layer not in MAP_LAYERS:
        raise ConfigError(f"unknown layer {layer!r}: choose one of {', '.join(MAP_LAYERS)}")
    if not digits:
        raise MnistCnnError("no digits to show: give at least one --index or --image")
    x = _as_batch(np.stack([d.image for d in digits]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits, acts = model(x.to(device), return_activations=True)
    finally:
        model.train(was_training)
    if layer not in acts:
        raise ConfigError(_no_layer(model, layer))
    return FeatureMaps(
        layer=layer,
        digits=tuple(digits),
        inputs=x.numpy(),
        maps=acts[layer].float().cpu().numpy(),
        probabilities=torch.softmax(logits.float(), dim=1).cpu().numpy(),
    )


def grid_shape(channels: int) -> tuple[int, int]:
    """Rows × columns for ``channels`` panels: 32 → 4×8 (the seed's grid), 64 → 8×8."""
    rows = 2 ** (int(math.log2(max(channels, 1))) // 2)
    return rows, math.ceil(channels / rows)


def _class_name(classes: Sequence[str] | None, k: int) -> str:
    return classes[k] if classes is not None and k < len(classes) else str(k)


def describe(digit: Digit, probs: np.ndarray, classes: Sequence[str] | None = None) -> str:
    """'test #3: true 6, predicted 6 (p = 0.998)', or without 'true' for an unlabelled digit."""
    pred = int(np.argmax(probs))
    text = f"{digit.name}: "
    if digit.label is not None:
        text += f"true {_class_name(classes, digit.label)}, "
    return text + f"predicted {_class_name(classes, pred)} (p = {probs[pred]:.3f})"


def plot_feature_maps(
    fm: FeatureMaps, *, scale: str = "map", classes: Sequence[str] | None = None
) -> Figure:
    """The input in grayscale beside its maps (4×8 for 32 channels, 8×8 for 64); a row per digit.

    Each map is an image holding exactly ``fm.maps[n, c]`` (so the picture can be checked
    against the model), labelled ``"<layer>[c]"``, under a text labelled ``"<layer>[c] title"``
    that gives the channel number. A digit's maps share one axes (``"<layer> maps"``): an axes
    per map cost ~12 ms each to make and draw, seconds for a figure of 2 × 64 maps.
    """
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}: choose one of {', '.join(SCALES)}")
    n, channels = fm.maps.shape[:2]
    rows, cols = grid_shape(channels)
    # Every size in inches, placed by hand so that titles never overlap and rows never squeeze.
    cell = 0.62 if rows <= 4 else 0.5  # one map panel
    gap, label_h = 0.07, 0.17  # between panels; above each panel for its channel number
    grid_w, grid_h = cols * (cell + gap) - gap, rows * (cell + label_h)
    side = min(grid_h, 4 * (cell + label_h)) - 0.75  # the input, with its title and caption
    margin, head = 0.15, 0.4  # page margin; the row's title
    width = margin + side + 0.35 + grid_w + margin
    row_h = head + grid_h + 0.12
    fig = new_figure(width, row_h * n, layout=None)
    shared_max = float(fm.maps.max()) if fm.maps.size else 0.0
    if scale == "map":
        caption = f"{fm.layer} maps: black = 0,\nwhite = each map's maximum"
    else:
        caption = f"{fm.layer} maps: black = 0,\nwhite = {shared_max:.3g} (one scale for all)"
    caption += "\n(gray number: map all 0)"
    total_h = row_h * n

    def axes(left: float, top: float, w: float, h: float, label: str) -> Any:
        # ``top`` is measured down from the top of the figure, in inches.
        return fig.add_axes(
            (left / width, (total_h - top - h) / total_h, w / width, h / total_h), label=label
        )

    for i in range(n):
        y0 = i * row_h
        fig.text(
            0.5,
            1 - (y0 + 0.08) / total_h,
            describe(fm.digits[i], fm.probabilities[i], classes),
            ha="center",
            va="top",
            fontsize=11,
            fontweight="bold",
        )
        grid_top = y0 + head
        in_top = grid_top + (grid_h - side) / 2
        ax_in = axes(margin, in_top, side, side, "input")
        ax_in.imshow(fm.inputs[i], cmap=GRAY, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax_in.set_title("input", fontsize=9, pad=3)
        ax_in.set_axis_off()
        ax_in.text(
            0.5,
            -0.03,
            caption,
            transform=ax_in.transAxes,
            ha="center",
            va="top",
            fontsize=7.5,
            color="0.35",
        )
        left0 = margin + side + 0.35
        # The grid's axes measure inches from its top-left corner, downwards.
        grid = axes(left0, grid_top, grid_w, grid_h, f"{fm.layer} maps")
        grid.set_axis_off()
        for c in range(channels):
            r, k = divmod(c, cols)
            x0, y0 = k * (cell + gap), r * (cell + label_h) + label_h
            a = fm.maps[i, c]
            top = shared_max if scale == "shared" else float(a.max())
            # An all-zero map (a filter that never fires here) is black, not mid-gray.
            grid.imshow(
                a,
                cmap=GRAY,
                vmin=0.0,
                vmax=top if top > 0 else 1.0,
                interpolation="nearest",
                extent=(x0, x0 + cell, y0 + cell, y0),
                aspect="auto",
                label=f"{fm.layer}[{c}]",
            )
            # A channel that is zero everywhere for this digit gets a faded label.
            grid.text(
                x0 + cell / 2,
                y0 - 0.03,
                str(c),
                ha="center",
                va="bottom",
                fontsize=7,
                color="black" if a.max() > 0 else "0.6",
                label=f"{fm.layer}[{c}] title",
            )
        grid.set_xlim(0, grid_w)  # after the images: each imshow fits the limits to itself
        grid.set_ylim(grid_h, 0)
    return fig


# --------------------------------------------------------------------------- filters


def filters(model: nn.Module, layer: str = "conv1") -> np.ndarray:
    """A convolution's learned kernels as float32 (out_channels, in_channels, k, k)."""
    if layer not in FILTER_LAYERS:
        raise ConfigError(f"unknown layer {layer!r}: choose one of {', '.join(FILTER_LAYERS)}")
    conv = getattr(model, layer, None)
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(_no_layer(model, layer))
    return conv.weight.detach().float().cpu().numpy().copy()


def _no_layer(model: nn.Module, layer: str) -> str:
    arch = getattr(getattr(model, "config", None), "arch", "this")
    return f"the {arch} network has no {layer} layer: choose conv1 or conv2"


def filter_mosaic(weights: np.ndarray, gap: int = 1) -> np.ndarray:
    """(out, in, k, k) kernels tiled into one image: a row per output channel, a column per input
    channel, ``gap`` pixels of NaN (drawn as background) between tiles."""
    n_out, n_in, k, _ = weights.shape
    step = k + gap
    mosaic = np.full((n_out * step - gap, n_in * step - gap), np.nan, dtype=np.float32)
    for o in range(n_out):
        for j in range(n_in):
            mosaic[o * step : o * step + k, j * step : j * step + k] = weights[o, j]
    return mosaic


def plot_filters(weights: np.ndarray, layer: str = "conv1") -> Figure:
    """The kernels in grayscale on one symmetric scale (gray 0, white +, black −).

    One input channel (conv1): a grid of kernels like the feature maps (4×8), each labelled with
    the channel it produces. Many input channels (conv2): every kernel, a row per output channel
    and a column per input channel (64×32 tiles) — nothing averaged away, and row ``o`` is what
    builds conv2's map ``o`` out of conv1's 32 maps.
    """
    n_out, n_in = weights.shape[:2]
    k = weights.shape[-1]
    limit = float(np.abs(weights).max()) or 1.0
    note = "gray = 0, white > 0, black < 0, one scale for all kernels"
    if n_in == 1:
        rows, cols = grid_shape(n_out)
        cell, gap, label_h, head, foot = 0.62, 0.07, 0.17, 0.45, 0.3
        width = cols * (cell + gap) - gap + 0.3
        height = head + rows * (cell + label_h) + foot
        fig = new_figure(width, height, layout=None)
        # One axes for the grid, measuring inches from its top-left corner, downwards; each
        # kernel an image labelled "<layer>[c]" (as in plot_feature_maps).
        grid_w, grid_h = cols * (cell + gap) - gap, rows * (cell + label_h)
        grid = fig.add_axes(
            (0.15 / width, (height - head - grid_h) / height, grid_w / width, grid_h / height),
            label=f"{layer} kernels",
        )
        for c in range(n_out):
            r, j = divmod(c, cols)
            x0, y0 = j * (cell + gap), r * (cell + label_h) + label_h
            grid.imshow(
                weights[c, 0],
                cmap=GRAY,
                vmin=-limit,
                vmax=limit,
                interpolation="nearest",
                extent=(x0, x0 + cell, y0 + cell, y0),
                aspect="auto",
                label=f"{layer}[{c}]",
            )
            grid.text(x0 + cell / 2, y0 - 0.03, str(c), ha="center", va="bottom", fontsize=7)
        grid.set_xlim(0, grid_w)
        grid.set_ylim(grid_h, 0)
        grid.set_axis_off()
        fig.text(
            0.5,
            1 - 0.1 / height,
            f"{layer}: {n_out} learned {k}×{k} kernels",
            ha="center",
            va="top",
            fontsize=12,
        )
        fig.text(
            0.5,
            0.08 / height,
            f"{note} (±{limit:.3g})",
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.35",
        )
    else:
        mosaic = filter_mosaic(weights)
        h, w = mosaic.shape
        px = 3 / DPI  # inches per weight: 3 whole pixels, so every tile and gap looks alike
        left, right, top, bottom = 0.75, 1.3, 0.85, 0.4
        width, height = left + w * px + right, top + h * px + bottom
        fig = new_figure(width, height, layout=None)
        ax = fig.add_axes(
            (left / width, bottom / height, w * px / width, h * px / height),
            label=f"{layer}[mosaic]",
        )
        from matplotlib import colormaps

        cmap = colormaps[GRAY].with_extremes(bad="#b9d3ee")  # gaps between tiles: light blue
        im = ax.imshow(
            mosaic,
            cmap=cmap,
            vmin=-limit,
            vmax=limit,
            interpolation="nearest",
            label=f"{layer}[mosaic]",
        )
        step = k + 1
        every_in = max(1, n_in // 8)
        every_out = max(1, n_out // 16)
        ax.set_xticks([j * step + k / 2 - 0.5 for j in range(0, n_in, every_in)])
        ax.set_xticklabels([str(j) for j in range(0, n_in, every_in)], fontsize=8)
        ax.set_yticks([o * step + k / 2 - 0.5 for o in range(0, n_out, every_out)])
        ax.set_yticklabels([str(o) for o in range(0, n_out, every_out)], fontsize=8)
        ax.tick_params(length=2, top=True, labeltop=True, bottom=False, labelbottom=False)
        ax.xaxis.set_label_position("top")
        ax.set_xlabel("input channel (a map of the layer below)", fontsize=9)
        ax.set_ylabel(f"output channel (a {layer} map)", fontsize=9)
        for spine in ax.spines.values():
            spine.set_visible(False)
        cax = fig.add_axes(((left + w * px + 0.25) / width, 0.35, 0.15 / width, 0.3))
        fig.colorbar(im, cax=cax, label="weight")
        fig.text(
            0.5,
            1 - 0.08 / height,
            f"{layer}: {n_out}×{n_in} learned {k}×{k} kernels",
            ha="center",
            va="top",
            fontsize=12,
        )
        fig.text(0.5, 0.08 / height, note, ha="center", va="bottom", fontsize=8, color="0.35")
    return fig


# --------------------------------------------------------------------------- training curves


def plot_training_curves(records: Sequence[dict[str, Any]], *, title: str = "") -> Figure:
    """Loss, and training/validation accuracy, against step (from ``metrics.jsonl`` records).

    Training accuracy is the seed's: one batch, dropout off, so it is noisy. A third panel shows
    the validation error on a log scale, where the last tenths of a percent are visible.
    """
    if not records:
        raise MnistCnnError("no metrics recorded yet: nothing to plot")
    steps = np.array([r["step"] for r in records], dtype=float)

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in records], dtype=float)

    loss, train_acc, val_acc = column("loss"), column("train_accuracy"), column("val_accuracy")
    fig = new_figure(12, 3.6, layout=None)  # margins set below: a layout pass costs a draw
    ax_loss, ax_acc, ax_err = fig.subplots(1, 3)
    marker = "o" if len(records) <= 40 else None
    ax_loss.plot(steps, loss, marker=marker, ms=3, color="C3")
    # Titles at matplotlib's default height, given (y=1.0): nothing sits above these axes, and a
    # title left to place itself searches for room on every draw (a tenth of the drawing time).
    ax_loss.set_title("training loss (mean since the last log)", fontsize=10, y=1.0)
    if np.nanmin(loss, initial=np.inf) > 0:
        ax_loss.set_yscale("log")
    ax_acc.plot(steps, train_acc, marker=marker, ms=3, lw=1, color="C0", label="training (1 batch)")
    ax_acc.plot(steps, val_acc, marker=marker, ms=3, color="C1", label="validation")
    ax_acc.set_ylim(0, 1.005)
    ax_acc.set_title("accuracy", fontsize=10, y=1.0)
    ax_acc.legend(loc="lower right", fontsize=8)
    err = 1.0 - val_acc
    ok = np.isfinite(err) & (err > 0)
    ax_err.plot(steps[ok], 100 * err[ok], marker=marker, ms=3, color="C1")
    if ok.any():
        ax_err.set_yscale("log")
        last = int(np.flatnonzero(ok)[-1])
        ax_err.annotate(
            f"{100 * err[last]:.2f}%",
            (steps[last], 100 * err[last]),
            textcoords="offset points",
            xytext=(-4, 6),
            ha="right",
            fontsize=8,
            color="C1",
        )
    ax_err.set_title("validation error, % (log scale)", fontsize=10, y=1.0)
    from matplotlib.ticker import FuncFormatter, LogLocator

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.3, not 3×10⁻¹
    for ax in (ax_loss, ax_err):
        if ax.get_yscale() == "log":
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=7)
    for ax in (ax_loss, ax_acc, ax_err):
        ax.set_xlabel("step")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlim(left=0)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.85 if title else 0.9, wspace=0.22)
    return fig


def run_curves_title(run_dir: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> str:
    """'runs/x: 600 steps, test accuracy 0.9812', or 'step 400 of 1000 (in progress)'."""
    run = RunDir(run_dir)
    name = run.path.name
    last = int(records[-1]["step"]) if records else 0
    results = run.read_results()
    if results is not None:
        return f"{name}: {results['step']} steps, test accuracy {results['test']['accuracy']:.4f}"
    try:
        total = run.read_config()["train"].get("steps")
    except MnistCnnError:
        total = None
    if type(total) is int:
        return f"{name}: step {last} of {total} (in progress or interrupted)"
    return f"{name}: step {last}"


def training_curves(run_dir: str | os.PathLike[str]) -> Figure:
    """The curves of a run folder (finished or still training)."""
    records = RunDir(run_dir).read_metrics()
    if not records:
        raise MnistCnnError(f"{run_dir}: {METRICS_FILE} holds no records yet; try again later")
    return plot_training_curves(records, title=run_curves_title(run_dir, records))


def save_training_curves(
    run_dir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None
) -> Path:
    """Draw a run's curves and write them (default ``<run>/curves.png``); returns the path."""
    fig = training_curves(run_dir)
    return save_figure(fig, path if path is not None else Path(run_dir) / CURVES_FILE)


# --------------------------------------------------------------------------- test-set views


def predict_probabilities(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Softmax probabilities (N, classes) for uint8 (N, 28, 28) images, in batches, eval mode."""
    from .evaluate import predict_batches

    images = torch.as_tensor(np.asarray(images))
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for _, logits, _ in predict_batches(
                model, images, batch_size=batch_size, device=device
            ):
                out.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def confusion_matrix(
    labels: np.ndarray | torch.Tensor, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
    """counts[true, predicted] as int64 (num_classes, num_classes)."""
    labels = np.asarray(labels, dtype=np.int64)
    flat = np.bincount(labels * num_classes + np.asarray(predictions), minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)


def plot_confusion(confusion: np.ndarray, classes: Sequence[str] | None = None) -> Figure:
    """The confusion matrix with every non-zero count written in its cell (log colour scale)."""
    confusion = np.asarray(confusion)
    k = confusion.shape[0]
    names = [_class_name(classes, i) for i in range(k)]
    fig = new_figure(6.2, 5.4)
    ax = fig.add_subplot()
    from matplotlib.colors import LogNorm

    shown = np.ma.masked_equal(confusion, 0)
    top = max(int(confusion.max()), 2)
    im = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=top), interpolation="nearest")
    for t in range(k):
        for p in range(k):
            v = int(confusion[t, p])
            if v:
                dark = math.log(v) > 0.6 * math.log(top)
                ax.text(
                    p,
                    t,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
    ax.set_xticks(range(k), names, fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(confusion) / max(confusion.sum(), 1)
    ax.set_title(f"confusion matrix ({confusion.sum():,} images, accuracy {acc:.4f})", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="images (log scale; empty cells blank)")
    return fig


@dataclass(frozen=True)
class Mistake:
    """A misclassified image: its index, true label, prediction and the prediction's probability."""

    index: int
    label: int
    predicted: int
    probability: float


def confident_mistakes(
    probabilities: np.ndarray, labels: np.ndarray | torch.Tensor, k: int = 16
) -> list[Mistake]:
    """The ``k`` wrong predictions the model was most sure of, most confident first."""
    labels = np.asarray(labels)
    pred = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    conf = probabilities[wrong, pred[wrong]]
    order = wrong[np.argsort(-conf, kind="stable")][:k]
    return [
        Mistake(int(i), int(labels[i]), int(pred[i]), float(probabilities[i, pred[i]]))
        for i in order
    ]


def plot_mistakes(
    mistakes: Sequence[Mistake],
    images: np.ndarray | torch.Tensor,
    classes: Sequence[str] | None = None,
    *,
    cols: int = 8,
) -> Figure:
    """The mistaken images in grayscale, each titled 'true → predicted (p)' and its index."""
    images = np.asarray(images)
    n = max(len(mistakes), 1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = new_figure(cols * 1.15 + 0.2, rows * 1.35 + 0.5)
    gs = fig.add_gridspec(rows, cols, wspace=0.1, hspace=0.3)
    if not mistakes:
        fig.text(0.5, 0.5, "no mistakes", ha="center", va="center")
    for j, m in enumerate(mistakes):
        ax = fig.add_subplot(gs[j // cols, j % cols])
        ax.imshow(images[m.index], cmap=GRAY, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(
            f"{_class_name(classes, m.label)} → {_class_name(classes, m.predicted)} "
            f"({m.probability:.2f})\n#{m.index}",
            fontsize=8,
            pad=2,
        )
        ax.set_axis_off()
    fig.suptitle("most confident mistakes: true → predicted (probability), test index", fontsize=10)
    return fig
