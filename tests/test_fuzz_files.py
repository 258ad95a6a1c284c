"""Property-based attacks on the files the program reads: IDX data files and model checkpoints.

Random truncations, bit flips and field edits of real files. Every outcome must be a result or
an error of the project's own type with a short one-line message: never another exception (a
traceback at the command line), never a hang. Examples are bounded (``max_examples``) so the
module stays within a few seconds.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mnist_cnn.checkpoint import load_model
from mnist_cnn.datasets import read_idx
from mnist_cnn.errors import CheckpointError, DataError
from mnist_cnn.model import ModelConfig

from .hostile_util import tiny_model_file, with_meta
from .idx_util import idx_bytes

FUZZ = settings(
    max_examples=40,
    deadline=None,  # the shared CI machine's timing is not the point; the timeout below is
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # No shrinking: a failure is reported as found; a failing run stays as short as a passing one.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
MAX_MESSAGE = 400

IDX_IMAGES = idx_bytes((np.arange(3 * 28 * 28) % 251).astype(np.uint8).reshape(3, 28, 28))
IDX_LABELS = idx_bytes(np.array([1, 7, 3], dtype=np.uint8))

# JSON values a hostile file could hold where a setting is expected.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def flip_bits(data: bytes, positions: list[int], bits: list[int]) -> bytes:
    out = bytearray(data)
    for p, b in zip(positions, bits, strict=False):
        out[p % len(out)] ^= 1 << b
    return bytes(out)


def _check_error(err: Exception) -> None:
    message = str(err)
    assert message and "\n" not in message and len(message) < MAX_MESSAGE, message


# --------------------------------------------------------------------------- IDX


def _read(data: bytes) -> np.ndarray | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "file"
        path.write_bytes(data)
        try:
            return read_idx(path)
        except DataError as err:
            _check_error(err)
            return None


@pytest.mark.timeout(60)
@FUZZ
@given(
    base=st.sampled_from([IDX_IMAGES, IDX_LABELS]),
    compress=st.booleans(),
    cut=st.integers(min_value=0, max_value=3_000),
    positions=st.lists(st.integers(min_value=0, max_value=3_000), max_size=6),
    bits=st.lists(st.integers(min_value=0, max_value=7), min_size=6, max_size=6),
    header_only=st.booleans(),
)
def test_mutated_idx_files_parse_or_fail_cleanly(base, compress, cut, positions, bits, header_only):
    data = base
    if header_only:  # aim the flips at the magic number, type, rank and dimensions
        positions = [p % 16 for p in positions]
    data = flip_bits(data, positions, bits) if positions else data
    if compress:
        data = gzip.compress(data, compresslevel=1)
        data = flip_bits(data, [p + 10 for p in positions[:1]], bits) if positions else data
    data = data[: max(cut, len(data) - cut)] if cut % 2 else data[:cut] + data[cut:]
    arr = _read(data)
    if arr is not None:  # whatever parsed must agree with its own header
        assert arr.size * arr.itemsize <= len(gzip.decompress(data) if compress else data)


@pytest.mark.timeout(60)
@FUZZ
@given(dims=st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=4))
def test_any_declared_dimensions_are_checked_before_reading(dims):
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    arr = _read(gzip.compress(header + bytes(64)))
    if arr is not None:
        assert list(arr.shape) == dims


# --------------------------------------------------------------------------- model checkpoints


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return tiny_model_file(tmp_path_factory.mktemp("fuzz") / "model.safetensors").read_bytes()


def _load(data: bytes) -> object | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(data)
        try:
            return load_model(path)[0]
        except CheckpointError as err:
            _check_error(err)
            return None


MODEL_FIELDS = [*ModelConfig.__dataclass_fields__, "unknown_field"]


@pytest.mark.timeout(60)
@FUZZ
@given(
    field=st.sampled_from(MODEL_FIELDS),
    value=json_values,
    top=st.sampled_from(["step", "dataset", "classes", "model", "other"]),
    top_value=json_values,
)
def test_edited_metadata_loads_or_fails_cleanly(model_bytes, field, value, top, top_value):
    model = _load(
        with_meta(
            model_bytes, {top: top_value} if top != "model" else {}, model_edit={field: value}
        )
    )
    if model is not None:  # accepted: then the edit was a valid setting for these tensors
        assert getattr(model.config, field, value) == value or field == "dropout"


@pytest.mark.timeout(60)
@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=60_000),
    positions=st.lists(st.integers(min_value=0, max_value=60_000), max_size=8),
    bits=st.lists(st.integers(min_value=0, max_value=7), min_size=8, max_size=8),
    in_header=st.booleans(),
)
def test_truncated_or_bit_flipped_models_load_or_fail_cleanly(
    model_bytes, cut, positions, bits, in_header
):
    header_len = int.from_bytes(model_bytes[:8], "little") + 8
    if in_header:
        positions = [p % header_len for p in positions]
    data = flip_bits(model_bytes, positions, bits) if positions else model_bytes
    if cut < len(data):
        data = data[:cut]
    _load(data)
