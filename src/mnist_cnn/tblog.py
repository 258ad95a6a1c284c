"""TensorBoard logs of a training run: ``mnist-cnn train --tensorboard`` (optional extra).

At every log step the run's ``tensorboard/`` folder gets the scalars of ``metrics.jsonl`` plus
the learning rate and the training speed, and the conv1 feature maps of one fixed validation
digit as a 4×8 picture, so the filters can be watched as they learn. Watch with
``tensorboard --logdir runs``. Needs the ``tensorboard`` extra
(``pip install -e '.[tensorboard]'``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adam import Optimizer
from .datasets import to_float
from .errors import ConfigError

TENSORBOARD_DIR = "tensorboard"  # inside the run folder
INSTALL_HINT = "pip install -e '.[tensorboard]' in the project's folder"

# Tag of each value written at a log step.
TAG_LOSS = "loss/train"
TAG_TRAIN_ACCURACY = "accuracy/train"
TAG_VAL_ACCURACY = "accuracy/validation"
TAG_LR = "optimizer/learning_rate"
TAG_SPEED = "speed/images_per_second"
TAG_FEATURE_MAPS = "conv1/feature_maps"
SCALAR_TAGS = (TAG_LOSS, TAG_TRAIN_ACCURACY, TAG_VAL_ACCURACY, TAG_LR, TAG_SPEED)

GRID_ROWS = 4  # conv1's 32 maps as 4 rows of 8
GRID_GAP = 1  # pixels between maps


def require_tensorboard() -> Any:
    """torch's ``SummaryWriter`` class; a one-line ConfigError if TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(f"--tensorboard needs the TensorBoard package: {INSTALL_HINT}") from None
    return SummaryWriter


def feature_map_grid(
    maps: torch.Tensor, rows: int = GRID_ROWS, gap: int = GRID_GAP
) -> torch.Tensor:
    """Lay out feature maps (C, H, W) as one grey picture (1, rows·H + gaps, cols·W + gaps).

    All maps share one scale (0 to the largest activation), so a filter that responds weakly
    looks dark and a dead one black; gaps are mid-grey.
    """
    c, h, w = maps.shape
    cols = math.ceil(c / rows)
    top = float(maps.max())
    scaled = maps.float() / top if top > 0 else torch.zeros_like(maps, dtype=torch.float32)
    grid = torch.full(
        (1, rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap), 0.5, dtype=torch.float32
    )
    for i in range(c):
        r, k = divmod(i, cols)
        grid[0, r * (h + gap) : r * (h + gap) + h, k * (w + gap) : k * (w + gap) + w] = scaled[i]
    return grid


class TensorBoardLog:
    """Writes one training run's records to ``<run>/tensorboard``; see the module docstring."""

    def __init__(
        self,
        run_dir: str | Path,
        probe: torch.Tensor,
        batch_size: int,
        start_step: int = 0,
    ) -> None:
        """``probe``: the uint8 digit (28, 28) whose conv1 maps are drawn at every log step.

        On resume (``start_step`` > 0) events an earlier attempt logged after the checkpoint are
        dropped by TensorBoard, as the run logs those steps again.
        """
        summary_writer = require_tensorboard()
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = summary_writer(str(self.log_dir), purge_step=start_step or None)
        self.probe = probe
        self.batch_size = batch_size
        self._last: tuple[int, float] | None = None  # (step, seconds) of the previous record

    def log(self, rec: dict[str, Any], model: nn.Module, optimizer: Optimizer) -> None:
        """Write one metrics record, the learning rate, the speed and the feature maps."""
        step = int(rec["step"])
        w = self.writer
        if rec.get("loss") is not None:
            w.add_scalar(TAG_LOSS, rec["loss"], step)
        w.add_scalar(TAG_TRAIN_ACCURACY, rec["train_accuracy"], step)
        w.add_scalar(TAG_VAL_ACCURACY, rec["val_accuracy"], step)
        w.add_scalar(TAG_LR, optimizer.param_groups[0]["lr"], step)
        if self._last is not None and rec["seconds"] > self._last[1] and step > self._last[0]:
            rate = (step - self._last[0]) * self.batch_size / (rec["seconds"] - self._last[1])
            w.add_scalar(TAG_SPEED, rate, step)
        self._last = (step, float(rec["seconds"]))
        w.add_image(TAG_FEATURE_MAPS, feature_map_grid(self._conv1(model)), step)
        w.flush()  # a live run is visible at once, and a crash loses nothing logged

    def _conv1(self, model: nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                x = to_float(self.probe.to(device)).view(1, 1, *self.probe.shape)
                _, acts = model(x, return_activations=True)
        finally:
            model.train(was_training)
        return acts["conv1"][0].cpu()  # (32, 28, 28)

    def close(self) -> None:
        self.writer.close()


def open_log(
    enabled: bool,
    run_dir: str | Path,
    probe: torch.Tensor,
    batch_size: int,
    start_step: int = 0,
    *,
    write: bool = True,
) -> TensorBoardLog | None:
    """A log when ``enabled`` and this process writes (rank 0), else None.

    Every process checks for the package when ``enabled``, so a missing extra stops the run
    before it starts, wherever it is noticed.
    """
    if not enabled:
        return None
    require_tensorboard()
    return TensorBoardLog(run_dir, probe, batch_size, start_step) if write else None
