"""Makers of small real files for the tests that attack: a tiny model file, its header rewritten,
a PNG of a digit."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mnist_cnn.checkpoint import save_model
from mnist_cnn.model import ModelConfig, build_model

# The seed's layers at a fraction of the width: 13 K parameters, saved and loaded in milliseconds.
TINY = ModelConfig(conv1_channels=4, conv2_channels=8, hidden=16)


def tiny_model_file(path: Path, seed: int = 0, extra: dict[str, Any] | None = None) -> Path:
    """A valid model file of the tiny network (``extra`` goes into its metadata)."""
    torch.manual_seed(seed)
    save_model(path, build_model(TINY), {"step": 5, **(extra or {})})
    return path


def store_digit_check(path: Path, n: int = 200) -> Path:
    """Store the model's not-a-digit check next to it, calibrated on ``n`` random pictures: a
    server then reads it instead of calibrating on all of MNIST (60,000 pictures)."""
    from mnist_cnn.checkpoint import load_model
    from mnist_cnn.datasets import MNISTLike, Split
    from mnist_cnn.digitness import scorer_for_run

    rng = np.random.default_rng(0)
    few = Split("x", torch.as_tensor(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                torch.zeros(n, dtype=torch.int64))  # fmt: skip
    scorer_for_run(path, load_model(path)[0], data=MNISTLike("mnist", tuple("0123456789"),
                                                               few, few, few))  # fmt: skip
    return path


def split_safetensors(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header JSON, tensor bytes) of a safetensors file."""
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header: dict[str, Any], body: bytes) -> bytes:
    """A safetensors file from a header and tensor bytes (the header padded as the format asks)."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def with_meta(
    data: bytes, edit: dict[str, Any], *, model_edit: dict[str, Any] | None = None
) -> bytes:
    """A model file's bytes with its mnist-cnn metadata changed (tensors untouched)."""
    header, body = split_safetensors(data)
    meta = json.loads(header["__metadata__"]["meta"])
    meta.update(edit)
    if model_edit:
        meta["model"] = {**meta["model"], **model_edit}
    header["__metadata__"]["meta"] = json.dumps(meta)
    return join_safetensors(header, body)


def digit_png(digit: np.ndarray, scale: int = 3) -> bytes:
    """A dark-on-light PNG of a 28×28 digit, ``scale`` times larger: a person's drawing."""
    big = Image.fromarray(255 - digit).resize((28 * scale, 28 * scale))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    return buf.getvalue()
