"""Batched evaluation: count correct predictions, divide once, report peak memory.

The seed evaluated all 10,000 test images in one batch (4.5–8.7 GB of GPU memory), then learned
to use batches of 100 (529 MB). Counting correct predictions per batch and dividing by the total
once makes the accuracy identical for every batch size; the seed's average of per-batch
accuracies is only right when every batch has the same size.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .datasets import NUM_CLASSES, to_float
from .device import PeakMemory, measure_peak_memory, synchronize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation found; the caller decides what to print."""

    total: int
    correct: int
    confusion: list[list[int]]  # confusion[true][predicted]
    batch_size: int  # the batch size that finally ran (smaller after an out-of-memory back-off)
    seconds: float
    memory: PeakMemory | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def per_class_accuracy(self) -> list[float | None]:
        """Accuracy on each true class (None for a class with no examples)."""
        out: list[float | None] = []
        for label, row in enumerate(self.confusion):
            n = sum(row)
            out.append(row[label] / n if n else None)
        return out

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion": self.confusion,
            "batch_size": self.batch_size,
            "seconds": self.seconds,
            "memory": self.memory.to_dict() if self.memory else None,
            "notes": list(self.notes),
        }


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err)
    )


def predict_batches(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    notes: list[str] | None = None,
) -> Iterator[tuple[int, torch.Tensor, int]]:
    """Yield ``(start, logits, batch_size)`` for batches of uint8 ``images`` (N, 28, 28).

    On an out-of-memory error the batch size is halved and the same batch retried (down to 1);
    each back-off is logged and appended to ``notes``.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    start, n = 0, len(images)
    while start < n:
        batch = images[start : start + batch_size]
        try:
            logits = model(to_float(batch.to(device, non_blocking=True)))
        except Exception as err:  # only out-of-memory is retried; everything else propagates
            if not _is_oom(err) or batch_size == 1:
                raise
            del err
            if device.type == "cuda":
                torch.cuda.empty_cache()
            message = f"out of memory at batch size {batch_size}; retrying at {batch_size // 2}"
            log.warning(message)
            if notes is not None:
                notes.append(message)
            batch_size //= 2
            continue
        yield start, logits, batch_size
        start += len(batch)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    measure_memory: bool = True,
) -> EvalResult:
    """Accuracy, confusion matrix and peak memory of ``model`` on uint8 ``images`` in batches.

    Runs in inference mode with the model in eval mode (dropout off) and restores the mode after.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    confusion = torch.zeros(NUM_CLASSES * NUM_CLASSES, dtype=torch.int64, device=device)
    notes: list[str] = []
    used = batch_size
    memory: PeakMemory | None = None
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(), measure_peak_memory(device) as memory:
            for start, logits, used in predict_batches(  # noqa: B007 (used after the loop)
                model, images, batch_size=batch_size, device=device, notes=notes
            ):
                truth = labels[start : start + len(logits)].to(device)
                pred = logits.argmax(dim=1)
                # One bincount per batch: stays on the device, no sync per batch.
                confusion += torch.bincount(
                    truth * NUM_CLASSES + pred, minlength=NUM_CLASSES * NUM_CLASSES
                )
            synchronize(device)
    finally:
        model.train(was_training)
    matrix = confusion.view(NUM_CLASSES, NUM_CLASSES).cpu()
    return EvalResult(
        total=int(matrix.sum()),
        correct=int(matrix.diagonal().sum()),
        confusion=matrix.tolist(),
        batch_size=used,
        seconds=time.perf_counter() - t0,
        memory=memory if measure_memory else None,
        notes=notes,
    )


def evaluate_run(
    run: str | os.PathLike[str],
    *,
    split: str = "test",
    batch_size: int = 100,
    device: str = "auto",
    dataset: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> tuple[EvalResult, dict[str, Any]]:
    """Load a run's model and evaluate it on a split; returns the result and context info."""
    from .checkpoint import load_model
    from .datasets import load_dataset
    from .device import device_description, select_device
    from .rundir import run_classes

    dev = select_device(device)
    model, meta = load_model(run, dev)
    trained_on, classes = run_classes(run, meta)
    name = dataset or trained_on
    loaded = load_dataset(name, data_dir)
    data = loaded.split(split)
    result = evaluate(model, data.images, data.labels, batch_size=batch_size, device=dev)
    if name != trained_on:
        classes = loaded.classes
    info = {"dataset": name, "device": device_description(dev), "classes": list(classes)}
    return result, info
