"""MNIST where torchvision and Keras keep it, checked like a download; torch Dataset views."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_cnn.datasets import (
    FILES,
    SplitDataset,
    load_dataset,
    load_test_split,
    torch_datasets,
)
from mnist_cnn.errors import DataError

from .idx_util import write_dataset


@pytest.fixture
def no_keras(tmp_path: Path, monkeypatch) -> Path:
    """An empty Keras home, so the machine's own ~/.keras never takes part."""
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def test_reads_torchvisions_copy_after_checking_it(data_root: Path, tmp_path: Path, no_keras):
    root = tmp_path / "root"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES.values():  # torchvision keeps the original .gz files (and unpacked ones)
        os.symlink(data_root / "mnist" / f"{name}.gz", raw / f"{name}.gz")
    test = load_test_split("mnist", root, download=False)
    reference = load_test_split("mnist", data_root, download=False)
    assert torch.equal(test.images, reference.images) and torch.equal(test.labels, reference.labels)

    # Files of the right shape whose content is not MNIST's are not used: no data, no download.
    other = tmp_path / "other"
    write_dataset(other / "MNIST" / "raw", n_train=120, n_test=30)
    with pytest.raises(DataError, match="not found"):
        load_test_split("mnist", other, download=False)


def test_reads_keras_npz_only_when_its_arrays_are_mnists(mnist, tmp_path: Path, no_keras):
    keras = no_keras / "datasets"
    keras.mkdir(parents=True)
    train_x = torch.cat([mnist.val.images, mnist.train.images]).numpy()  # the file's order
    train_y = torch.cat([mnist.val.labels, mnist.train.labels]).numpy().astype(np.uint8)
    test_x, test_y = mnist.test.images.numpy(), mnist.test.labels.numpy().astype(np.uint8)
    np.savez(keras / "mnist.npz", x_train=train_x, y_train=train_y, x_test=test_x, y_test=test_y)
    empty = tmp_path / "empty"
    data = load_dataset("mnist", empty, download=False)
    assert torch.equal(data.train.images, mnist.train.images)
    assert torch.equal(data.test.labels, mnist.test.labels)

    tampered = test_x.copy()
    tampered[0, 14, 14] ^= 1  # one pixel: the content hash differs
    np.savez(keras / "mnist.npz", x_train=train_x, y_train=train_y, x_test=tampered, y_test=test_y)
    with pytest.raises(DataError, match="not found"):
        load_test_split("mnist", empty, download=False)

    # An .npz holding Python objects is refused, never unpickled.
    objects = np.array([{"x": 1}], dtype=object)
    np.savez(keras / "mnist.npz", x_train=objects, y_train=train_y, x_test=objects, y_test=test_y)
    with pytest.raises(DataError, match="not found"):
        load_test_split("mnist", empty, download=False)


def test_torch_dataset_views(tmp_path: Path):
    root = tmp_path / "data"
    write_dataset(root / "mnist", n_train=120, n_test=30, seed=3)
    sets = torch_datasets("mnist", root, download=False)
    assert {k: len(v) for k, v in sets.items()} == {"train": 110, "val": 10, "test": 30}
    assert all(isinstance(v, torch.utils.data.Dataset) for v in sets.values())
    image, label = sets["test"][4]
    split = sets["test"].split
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert torch.equal(image[0], split.images[4].float() / 255) and label == int(split.labels[4])
    loader = torch.utils.data.DataLoader(sets["test"], batch_size=16)
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 28, 28) and torch.equal(y, split.labels[:16])
    flipped = SplitDataset(split, transform=lambda t: 1 - t, target_transform=lambda y: -y)
    image, label = flipped[4]
    assert torch.equal(image[0], 1 - split.images[4].float() / 255) and label == -int(
        split.labels[4]
    )
