"""What made the network say that: per-pixel attributions of one class's logit.

Three methods, each a plain function from images to arrays of the images' shape:

- :func:`gradient_x_input`: the logit's gradient times the input — a first-order estimate of
  what each pixel adds to the logit;
- :func:`integrated_gradients`: the gradient averaged along the straight path from a baseline
  (blank paper: all 0, as MNIST's background) to the input, times the input. Its attributions
  add up to logit(input) − logit(baseline) (completeness), up to the error of the
  ``steps``-point midpoint rule that approximates the path integral;
- :func:`occlusion`: how much the logit drops when a small patch of the image is set to blank
  paper, slid over the image; each pixel gets the mean drop of the patches covering it.

Positive values are evidence for the class, negative against it. Images are MNIST's: (N, 28, 28)
uint8 or float in [0, 1], white ink on black. The class is the network's own prediction unless a
``target`` is given. The model is used in eval mode and put back as it was; the work is done in
chunks of at most ``CHUNK`` network inputs, so memory stays bounded for any number of images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .datasets import IMAGE_SIZE, to_float
from .errors import ConfigError, MnistCnnError
from .plotting import GRAY, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHODS = ("gradient-x-input", "integrated-gradients", "occlusion")
METHOD_TITLES = {
    "gradient-x-input": "gradient × input",
    "integrated-gradients": "integrated gradients",
    "occlusion": "occlusion",
}
IG_STEPS = 64  # midpoint-rule steps: completeness holds within 1% here (a test checks it)
OCCLUSION_PATCH = 5  # pixels: about a stroke's width and a half at 28×28
OCCLUSION_STRIDE = 2
CHUNK = 256  # network inputs per forward/backward pass: bounds memory
DIVERGING = "RdBu_r"  # red: evidence for the class, blue: against, white: none


@dataclass(frozen=True)
class Explanation:
    """Attributions of some images for one class each, by one method."""

    method: str
    inputs: np.ndarray  # (N, 28, 28) float32 in [0, 1]: what the network saw
    targets: np.ndarray  # (N,) int64: the class each attribution is for
    probabilities: np.ndarray  # (N, classes) softmax of the logits
    attributions: np.ndarray  # (N, 28, 28) float32: signed, in logit units


def as_inputs(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) or (28, 28), uint8 or float in [0, 1] -> float32 (N, 28, 28) on the CPU."""
    t = torch.as_tensor(np.asarray(images))
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or tuple(t.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise MnistCnnError(f"expected 28×28 images, got shape {tuple(t.shape)}")
    x = to_float(t) if t.dtype == torch.uint8 else t.to(torch.float32)
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise MnistCnnError("image values must lie in 0–1 (floats) or 0–255 (uint8)")
    return x


class _EvalMode:
    """Eval mode and float32 for the duration; the model's mode is restored afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> torch.device:
        self.was_training = self.model.training
        self.model.eval()
        return next(self.model.parameters()).device

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _logits(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits (N, classes) in float32 for (N, 28, 28) inputs, in chunks, without gradients."""
    with torch.inference_mode():
        return torch.cat(
            [model(x[s : s + CHUNK].to(device)).float().cpu() for s in range(0, len(x), CHUNK)]
        )


def _targets(logits: torch.Tensor, target: int | Sequence[int] | None) -> torch.Tensor:
    n, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, dtype=torch.int64).reshape(-1)
    if len(t) == 1:
        t = t.expand(n)
    if len(t) != n:
        raise ConfigError(f"got {len(t)} targets for {n} images")
    if t.min() < 0 or t.max() >= classes:
        raise ConfigError(f"target class must lie in 0–{classes - 1}, got {t.tolist()}")
    return t.clone()


def _gradients(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """d logit[target] / d input for each row of ``x`` (M, 28, 28), in chunks."""
    out = []
    for s in range(0, len(x), CHUNK):
        xs = x[s : s + CHUNK].to(device).requires_grad_(True)
        logits = model(xs).float()
        picked = logits.gather(1, targets[s : s + CHUNK].to(device)[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, xs)
        out.append(grad.cpu())
    return torch.cat(out)


def gradient_x_input(
    model: nn.Module, images: np.ndarray | torch.Tensor, target: int | Sequence[int] | None = None
) -> np.ndarray:
    """Gradient of the target logit times the input: (N, 28, 28) float32."""
    return explain(model, images, "gradient-x-input", target).attributions


def integrated_gradients(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    target: int | Sequence[int] | None = None,
    *,
    steps: int = IG_STEPS,
) -> np.ndarray:
    """Integrated gradients from blank paper (all 0) to each image: (N, 28, 28) float32."""
    return explain(model, images, "integrated-gradients", target, steps=steps).attributions


def occlusion(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    target: int | Sequence[int] | None = None,
    *,
    patch: int = OCCLUSION_PATCH,
    stride: int = OCCLUSION_STRIDE,
) -> np.ndarray:
    """Mean drop of the target logit when a ``patch``² square covering each pixel is blanked."""
    return explain(model, images, "occlusion", target, patch=patch, stride=stride).attributions


def _integrated(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, device: torch.device, steps: int
) -> torch.Tensor:
    # Midpoints of ``steps`` equal intervals of the path baseline (0) -> x. Rows are
    # (image, step) pairs, batched across images so small inputs fill a chunk.
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    out = torch.empty_like(x)
    per = max(1, CHUNK // steps)  # images per pass
    for s in range(0, len(x), per):
        xs = x[s : s + per]
        path = (alphas[None, :, None, None] * xs[:, None]).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        grads = _gradients(model, path, t[s : s + per].repeat_interleave(steps), device)
        out[s : s + per] = grads.view(len(xs), steps, IMAGE_SIZE, IMAGE_SIZE).mean(1) * xs
    return out


def _patch_starts(patch: int, stride: int) -> list[int]:
    starts = list(range(0, IMAGE_SIZE - patch + 1, stride))
    if starts[-1] != IMAGE_SIZE - patch:
        starts.append(IMAGE_SIZE - patch)  # the last patch touches the edge: every pixel covered
    return starts


def _occluded(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    device: torch.device,
    patch: int,
    stride: int,
) -> torch.Tensor:
    starts = _patch_starts(patch, stride)
    masks = torch.ones(len(starts) ** 2, IMAGE_SIZE, IMAGE_SIZE)
    for k, (r, c) in enumerate((r, c) for r in starts for c in starts):
        masks[k, r : r + patch, c : c + patch] = 0
    cover = (1 - masks).sum(0)  # patches covering each pixel (≥ 1)
    base = _logits(model, x, device).gather(1, t[:, None])[:, 0]
    out = torch.empty_like(x)
    for i in range(len(x)):
        logits = _logits(model, x[i][None] * masks, device)[:, t[i]]
        drops = base[i] - logits  # (patches,)
        out[i] = (drops[:, None, None] * (1 - masks)).sum(0) / cover
    return out


def explain(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    method: str = "integrated-gradients",
    target: int | Sequence[int] | None = None,
    *,
    steps: int = IG_STEPS,
    patch: int = OCCLUSION_PATCH,
    stride: int = OCCLUSION_STRIDE,
) -> Explanation:
    """Attributions of ``images`` by ``method`` (one of :data:`METHODS`), with the network's
    probabilities and the classes explained (its predictions unless ``target`` is given)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    if not 1 <= patch <= IMAGE_SIZE or stride < 1:
        raise ConfigError(f"occlusion patch must lie in 1–{IMAGE_SIZE} and stride be ≥ 1")
    x = as_inputs(images)
    with _EvalMode(model) as device:
        logits = _logits(model, x, device)
        t = _targets(logits, target)
        if method == "gradient-x-input":
            attr = _gradients(model, x, t, device) * x
        elif method == "integrated-gradients":
            attr = _integrated(model, x, t, device, steps)
        else:
            attr = _occluded(model, x, t, device, patch, stride)
    return Explanation(
        method=method,
        inputs=x.numpy(),
        targets=t.numpy(),
        probabilities=torch.softmax(logits, 1).numpy(),
        attributions=attr.numpy().astype(np.float32),
    )


# --------------------------------------------------------------------------- pictures


def overlay(image: np.ndarray, attribution: np.ndarray, limit: float | None = None) -> np.ndarray:
    """RGB (28, 28, 3) float in [0, 1]: the input in gray, tinted red where a pixel counts for
    the class and blue where it counts against, as strongly as its share of ``limit`` (default:
    the largest magnitude)."""
    limit = float(np.abs(attribution).max()) if limit is None else limit
    strength = np.clip(attribution / limit, -1, 1) if limit > 0 else np.zeros_like(attribution)
    gray = 0.15 + 0.5 * np.asarray(image, dtype=np.float32)  # dimmed, so colour reads over ink
    rgb = np.repeat(gray[..., None], 3, axis=2)
    pos, neg = np.clip(strength, 0, 1)[..., None], np.clip(-strength, 0, 1)[..., None]
    red, blue = np.array([1.0, 0.1, 0.1]), np.array([0.15, 0.35, 1.0])
    rgb = rgb * (1 - pos) + red * pos
    rgb = rgb * (1 - neg) + blue * neg
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def plot_explanations(
    explanations: Sequence[Explanation],
    names: Sequence[str],
    classes: Sequence[str] | None = None,
    labels: Sequence[int | None] | None = None,
) -> Figure:
    """One row per image: the input, then for each method its attribution (diverging scale,
    white = 0, symmetric around 0 per panel) and the overlay on the input.

    Panels are labelled ``input[i]``, ``<method>[i]`` (holding exactly the attribution array)
    and ``<method> overlay[i]``, so the picture can be checked against the arrays.
    """
    if not explanations:
        raise MnistCnnError("nothing to explain")
    n = len(explanations[0].inputs)
    cols = 1 + 2 * len(explanations)
    fig = new_figure(1.55 * cols + 0.3, 1.95 * n + 0.7, layout=None)
    gs = fig.add_gridspec(n, cols, left=0.02, right=0.98, top=1 - 0.7 / (1.95 * n + 0.7),
                          bottom=0.02, wspace=0.08, hspace=0.55)  # fmt: skip

    def name_of(k: int) -> str:
        return classes[k] if classes is not None and k < len(classes) else str(k)

    first = explanations[0]
    for i in range(n):
        probs = first.probabilities[i]
        pred = int(np.argmax(probs))
        ax = fig.add_subplot(gs[i, 0], label=f"input[{i}]")
        ax.imshow(first.inputs[i], cmap=GRAY, vmin=0, vmax=1, interpolation="nearest")
        label = labels[i] if labels is not None else None
        title = f"{names[i]}\n"
        title += f"true {name_of(label)}, " if label is not None else ""
        title += f"said {name_of(pred)} ({probs[pred]:.2f})"
        ax.set_title(title, fontsize=7.5, pad=2)
        ax.set_axis_off()
        for j, e in enumerate(explanations):
            a = e.attributions[i]
            limit = float(np.abs(a).max()) or 1.0
            short = METHOD_TITLES[e.method]
            ax = fig.add_subplot(gs[i, 1 + 2 * j], label=f"{e.method}[{i}]")
            ax.imshow(a, cmap=DIVERGING, vmin=-limit, vmax=limit, interpolation="nearest")
            ax.set_title(f"{short}\nfor {name_of(int(e.targets[i]))} (±{limit:.2g})",
                         fontsize=7.5, pad=2)  # fmt: skip
            ax.set_axis_off()
            ax = fig.add_subplot(gs[i, 2 + 2 * j], label=f"{e.method} overlay[{i}]")
            ax.imshow(overlay(e.inputs[i], a, limit), interpolation="nearest")
            ax.set_title("on the input", fontsize=7.5, pad=2)
            ax.set_axis_off()
    fig.suptitle(
        "what made it say this: red = evidence for the class, blue = against (logit units)",
        fontsize=9,
    )
    return fig


def explain_figure(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    names: Sequence[str],
    *,
    methods: Sequence[str] = METHODS,
    target: int | None = None,
    classes: Sequence[str] | None = None,
    labels: Sequence[int | None] | None = None,
) -> tuple[Figure, list[Explanation]]:
    """Explain ``images`` by each of ``methods`` and draw them (one row per image)."""
    explanations = [explain(model, images, m, target) for m in methods]
    return plot_explanations(explanations, names, classes, labels), explanations


def mistake_explanations(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    mistakes: Sequence[Any],
    classes: Sequence[str] | None = None,
    *,
    limit: int = 8,
) -> Figure:
    """For the first ``limit`` mistakes (``inspect.Mistake``: index, label, predicted): the input
    and integrated gradients for the wrong answer and for the true class, side by side."""
    shown = list(mistakes)[:limit]
    if not shown:
        raise MnistCnnError("no mistakes to explain")
    x = np.asarray(images)[[m.index for m in shown]]
    said = explain(model, x, "integrated-gradients", [m.predicted for m in shown])
    truth = explain(model, x, "integrated-gradients", [m.label for m in shown])
    return plot_explanations(
        [said, truth], [f"#{m.index}" for m in shown], classes, [m.label for m in shown]
    )
