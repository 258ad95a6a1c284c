"""A model file's header, field by field: each damage is refused in one line that names it,
before any tensor is read (the header is parsed on its own)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from mnist_cnn.checkpoint import FORMAT, FORMAT_VERSION, load_model
from mnist_cnn.errors import CheckpointError
from mnist_cnn.model import ModelConfig

MODEL = ModelConfig(conv1_channels=2, conv2_channels=4, hidden=8).to_dict()


def _file(path: Path, header: object) -> Path:
    """A safetensors-shaped file: 8-byte little-endian length, the JSON header, no data."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def _meta(meta: object = None, version: object = str(FORMAT_VERSION)) -> dict:
    text = json.dumps({"model": MODEL} if meta is None else meta)
    return {"__metadata__": {"format": FORMAT, "version": version, "meta": text}}


CASES = {
    "header is a list": ([1, 2], "header is not a JSON object"),
    "version not a number": (_meta(version="v1"), "format version"),
    "version from the future": (_meta(version="99"), "newer mnist-cnn"),
    "meta is not JSON": (
        {"__metadata__": {"format": FORMAT, "version": "1", "meta": "{"}},
        "damaged metadata",
    ),
    "meta is a list": (_meta(meta=[1]), "not a JSON object"),
    "tensor without a dtype": ({**_meta(), "fc1.weight": {"shape": [8, 196]}}, "(tensor"),
    "tensor shape not whole numbers": (
        {**_meta(), "fc1.weight": {"dtype": "F32", "shape": [8, -1]}},
        "(tensor",
    ),
    "no model description": (_meta(meta={"step": 1}), "model description missing"),
    "negative step": (_meta(meta={"model": MODEL, "step": -1}), "step must be a whole number"),
    "empty dataset name": (_meta(meta={"model": MODEL, "dataset": ""}), "dataset must be"),
}


@pytest.mark.parametrize(("header", "words"), CASES.values(), ids=CASES.keys())
def test_a_damaged_header_is_named(tmp_path: Path, header: object, words: str) -> None:
    path = _file(tmp_path / "model.safetensors", header)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert words in message and str(path) in message and "\n" not in message


def test_a_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    """Opening a FIFO for reading would wait for a writer forever."""
    import os

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_model(fifo)
