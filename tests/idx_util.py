"""Hand-built IDX bytes for unit tests (no network, no real data)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic 0x0000 08 <ndim>, big-endian dims, raw data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def learnable_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28×28 uint8 pictures a network can learn in a few dozen steps: faint noise plus one bright
    5×10 block whose place (one of 10: 2 rows of 5) is the class."""
    n = len(labels)
    images = rng.integers(0, 90, (n, 28, 28), dtype=np.uint8)
    brightness = rng.integers(150, 256, n, dtype=np.uint8)
    for k in range(10):
        top, left = 3 + 13 * (k // 5), 1 + 5 * (k % 5)
        chosen = labels == k
        images[chosen, top : top + 10, left : left + 5] = brightness[chosen, None, None]
    return images


def write_dataset(
    folder: Path,
    n_train: int = 120,  # the loader holds out the first twelfth: 10 validation, 110 training
    n_test: int = 30,
    seed: int = 0,
    learnable: bool = False,
    label_noise: float = 0.0,
) -> Path:
    """Write a small MNIST-shaped dataset (gzip-compressed) into ``folder``; returns it.

    By default the pictures are uniform noise (nothing to learn). ``learnable=True`` draws
    :func:`learnable_images` with every class present; ``label_noise`` then relabels that share
    of images at random, so a trained network still makes some mistakes.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if learnable:
        labels = {
            "train": (np.arange(n_train) % 10).astype(np.uint8),
            "t10k": (np.arange(n_test) % 10).astype(np.uint8),
        }
        for v in labels.values():
            rng.shuffle(v)
        images = {k: learnable_images(v, rng) for k, v in labels.items()}
        for v in labels.values():
            flip = rng.random(len(v)) < label_noise
            v[flip] = rng.integers(0, 10, int(flip.sum()), dtype=np.uint8)
    else:  # drawn in file order, as always: the same seed gives the same files
        images, labels = {}, {}
        for part, n in (("train", n_train), ("t10k", n_test)):
            images[part] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            labels[part] = rng.integers(0, 10, n, dtype=np.uint8)
    parts = {
        "train-images-idx3-ubyte": images["train"],
        "train-labels-idx1-ubyte": labels["train"],
        "t10k-images-idx3-ubyte": images["t10k"],
        "t10k-labels-idx1-ubyte": labels["t10k"],
    }
    for name, arr in parts.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arr), compresslevel=1))
    return folder
