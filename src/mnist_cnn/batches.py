"""The data feed: epoch order as a function of (seed, epoch), batches gathered on the device.

The whole training split lives on the device as uint8 (43 MB for MNIST); a batch is a gather
from it, normalised per batch, so no per-sample Python work runs in the training loop. Every
path (plain, fast, distributed) reads the same batches: ``batch_indices(seed, step, ...)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .datasets import to_float

# Offsets that keep the shifts' random stream apart from the order's.
_ORDER_STREAM = 1_000_003
_SHIFT_STREAM = 7_777_777


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a pure function of (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * _ORDER_STREAM + epoch)
    return torch.randperm(n, generator=gen)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> torch.Tensor:
    """Indices of the training batch at ``step`` (each epoch drops its last partial batch)."""
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    return epoch_order(seed, epoch, n)[pos * batch_size : (pos + 1) * batch_size]


class BatchSource:
    """Training batches gathered on the device from the uint8 split: a function of (seed, step).

    The order is ``epoch_order``; each epoch's order, and with ``shift`` its per-image shifts of
    up to ±``shift`` pixels, is drawn once and kept on the device. Returns float (B, 1, 28, 28)
    in [0, 1] (channels-last when asked) and int64 labels.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        seed: int,
        batch_size: int,
        shift: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.images = images  # (N, H, W) uint8, on the device
        self.labels = labels
        self.seed = seed
        self.batch_size = batch_size
        self.shift = shift
        self.channels_last = channels_last
        self.per_epoch = len(images) // batch_size
        self._epoch = -1
        self._perm = self._dx = self._dy = torch.empty(0)
        h, w = images.shape[-2:]
        dev = images.device
        self._rows = torch.arange(h, device=dev)
        self._cols = torch.arange(w, device=dev)

    def _load_epoch(self, epoch: int) -> None:
        dev = self.images.device
        self._perm = epoch_order(self.seed, epoch, len(self.images)).to(dev)
        if self.shift:
            gen = torch.Generator().manual_seed(self.seed * _ORDER_STREAM + epoch + _SHIFT_STREAM)
            d = torch.randint(-self.shift, self.shift + 1, (2, len(self.images)), generator=gen)
            self._dy, self._dx = d[0].to(dev), d[1].to(dev)
        self._epoch = epoch

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._load_epoch(epoch)
        sl = slice(pos * self.batch_size, (pos + 1) * self.batch_size)
        idx = self._perm[sl]
        x = self._shifted(idx, self._dy[sl], self._dx[sl]) if self.shift else self.images[idx]
        x = to_float(x).unsqueeze(1)  # (B, 1, H, W)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]

    def _shifted(self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` moved by (dy, dx) pixels each, zeros shifted in: one gather, uint8."""
        s = self.shift
        padded = nn.functional.pad(self.images[idx], (s, s, s, s))  # (B, H+2s, W+2s)
        rows = (self._rows + s - dy[:, None])[:, :, None]  # (B, H, 1)
        cols = (self._cols + s - dx[:, None])[:, None, :]  # (B, 1, W)
        b = torch.arange(len(idx), device=idx.device)[:, None, None]
        return padded[b, rows, cols]
