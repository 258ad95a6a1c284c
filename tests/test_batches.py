"""The data feed: device batches follow the plain order; shifts move whole images."""

from __future__ import annotations

import torch

from mnist_cnn.batches import BatchSource, batch_indices


def test_batch_source_follows_the_plain_order() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (70, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (70,), generator=gen)
    source = BatchSource(images, labels, seed=3, batch_size=20)
    for step in (0, 2, 3, 7):  # 3 batches per epoch: steps 3 and 7 are in later epochs
        idx = batch_indices(3, step, 20, 70)
        x, y = source(step)
        assert torch.equal(y, labels[idx])
        assert torch.equal(x, images[idx].float().div(255).unsqueeze(1))  # exact: /255 in fp32
    x, _ = BatchSource(images, labels, seed=3, batch_size=20, channels_last=True)(0)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_batch_source_shifts_whole_images() -> None:
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)
    images[:, 10:18, 10:18] = 255  # a centred square: easy to locate after a shift
    labels = torch.arange(10)
    source = BatchSource(images, labels, seed=0, batch_size=10, shift=2)
    x, _ = source(0)
    seen = set()
    for img in x[:, 0]:
        rows = img.sum(1).nonzero()
        cols = img.sum(0).nonzero()
        dy, dx = int(rows[0]) - 10, int(cols[0]) - 10
        assert -2 <= dy <= 2 and -2 <= dx <= 2
        assert img.sum() == 64  # moved, not cropped or stretched (exact: 64 ones)
        seen.add((dy, dx))
    assert len(seen) > 1  # each image draws its own shift
    assert torch.equal(source(0)[0], x)  # a pure function of (seed, step)
