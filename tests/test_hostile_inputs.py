"""Hostile files and arguments, case by case: each is refused in one short line, before anything
large is allocated, never with a traceback (issue: "nothing read from a file is trusted")."""

from __future__ import annotations

import gzip
import json
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mnist_cnn import checkpoint
from mnist_cnn.checkpoint import load_model
from mnist_cnn.cli import main
from mnist_cnn.datasets import load_dataset, parse_idx, read_idx
from mnist_cnn.errors import CheckpointError, DataError, MnistCnnError
from mnist_cnn.preprocess import ImageError, load_image

from .hostile_util import digit_png, join_safetensors, split_safetensors, tiny_model_file, with_meta
from .idx_util import write_dataset

MAX_MESSAGE = 400  # characters: an error quotes what it must, never the file


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return tiny_model_file(tmp_path_factory.mktemp("m") / "model.safetensors").read_bytes()


@pytest.fixture
def no_tensor_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any tensor is read: refusals must come from the header alone."""

    def refuse(*args, **kwargs):
        raise AssertionError("tensors were read before the metadata was refused")

    monkeypatch.setattr(checkpoint, "load_file", refuse)


# --------------------------------------------------------------------------- model metadata


@pytest.mark.parametrize(
    "meta, model_edit, expected",
    [
        ({}, {"hidden": 250_000}, "hidden must lie in"),
        ({}, {"hidden": -5}, "hidden must lie in"),
        ({}, {"hidden": "1024"}, "hidden must be a whole number"),
        ({}, {"hidden": True}, "hidden must be a whole number"),
        ({}, {"dropout": 5.0}, "dropout must lie in"),
        ({}, {"dropout": float("nan")}, "dropout must lie in"),
        ({}, {"num_classes": 20}, "20 classes"),
        ({}, {"kernel_size": 4}, "kernel_size must be odd"),
        ({}, {"kernel_size": 3}, r"conv1\.weight has shape"),  # valid setting, wrong tensors
        ({}, {"arch": ["deep-mnist"]}, "arch must be a name"),
        ({}, {"arch": "x" * 10_000}, "unknown architecture"),
        ({}, {"x" * 10_000: 1}, "unknown model setting"),
        ({"step": "<script>alert(1)</script>"}, None, "step must be a whole number"),
        ({"step": -100}, None, "step must be a whole number"),
        ({"model": None}, None, "model settings must be a JSON object"),
        ({"classes": ["a"] * 3}, None, "classes must be 10 short names"),
    ],
)
def test_bad_metadata_is_refused_from_the_header(
    tmp_path, model_bytes, no_tensor_reads, meta, model_edit, expected
):
    path = tmp_path / "m.safetensors"
    path.write_bytes(with_meta(model_bytes, meta, model_edit=model_edit))
    with pytest.raises(CheckpointError, match=expected) as err:
        load_model(path)
    message = str(err.value)
    assert "\n" not in message and len(message) < MAX_MESSAGE, message


def test_format_version_that_is_not_a_number_is_refused(tmp_path, model_bytes, no_tensor_reads):
    header, body = split_safetensors(model_bytes)
    header["__metadata__"]["version"] = "abc"
    path = tmp_path / "m.safetensors"
    path.write_bytes(join_safetensors(header, body))
    with pytest.raises(CheckpointError, match="format version 'abc'"):
        load_model(path)


def test_huge_header_is_refused_unread_and_not_echoed(tmp_path, model_bytes, no_tensor_reads):
    # A valid safetensors file whose header carries 3 MB of metadata.
    header, body = split_safetensors(model_bytes)
    header["__metadata__"]["padding"] = "<" * 3_000_000
    path = tmp_path / "m.safetensors"
    path.write_bytes(join_safetensors(header, body))
    with pytest.raises(CheckpointError, match="header claims") as err:
        load_model(path)
    assert len(str(err.value)) < MAX_MESSAGE


def test_tensor_declared_larger_than_the_network_is_refused_before_loading(
    tmp_path, model_bytes, no_tensor_reads
):
    header, body = split_safetensors(model_bytes)
    header["fc1.weight"]["shape"] = [16, 10**9]
    path = tmp_path / "m.safetensors"
    path.write_bytes(join_safetensors(header, body))
    with pytest.raises(CheckpointError, match=r"fc1\.weight has shape \(16, 1000000000\)"):
        load_model(path)


def test_a_valid_tiny_model_still_loads(tmp_path, model_bytes):
    path = tmp_path / "m.safetensors"
    path.write_bytes(model_bytes)
    model, meta = load_model(path)
    assert meta["step"] == 5 and model.config.hidden == 16


# --------------------------------------------------------------------------- IDX files


def test_dimensions_whose_product_overflows_are_refused():
    data = struct.pack(">HBB", 0, 0x08, 4) + struct.pack(">IIII", *(2**32 - 1,) * 4)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(data, "x")


def _gzip_idx(path: Path, n_images: int, zeros_mib: int) -> Path:
    """A gzip IDX file declaring ``n_images`` 28×28 images, followed by ``zeros_mib`` MiB of
    zeros (as that many gzip members of 1 MiB each: about 1 KiB per MiB on disk)."""
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", n_images, 28, 28)
    path.write_bytes(gzip.compress(header) + gzip.compress(bytes(1 << 20)) * zeros_mib)
    return path


def _peak_python_memory(fn) -> int:
    """Peak bytes Python allocated while ``fn`` ran (inflated data is held in Python bytes)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_gzip_bomb_is_refused_from_its_header_before_inflating(tmp_path):
    bomb = _gzip_idx(tmp_path / "bomb.gz", n_images=5_000_000, zeros_mib=64)

    def read() -> None:
        with pytest.raises(DataError, match=r"declares shape \(5000000, 28, 28\)"):
            read_idx(bomb)

    assert _peak_python_memory(read) < 8 << 20  # inflating it whole would take 64 MiB


def test_inflating_stops_at_the_declared_size(tmp_path):
    path = _gzip_idx(tmp_path / "long.gz", n_images=10, zeros_mib=64)

    def read() -> None:
        with pytest.raises(DataError, match="unexpected bytes after the data"):
            read_idx(path)

    assert _peak_python_memory(read) < 8 << 20


def test_pipes_and_devices_are_not_read_as_idx(tmp_path):
    with pytest.raises(DataError, match="not a regular file"):
        read_idx("/dev/zero")


def test_a_test_split_of_zero_images_is_an_error(tmp_path):
    folder = write_dataset(tmp_path / "mnist", n_train=120, n_test=0)
    assert parse_idx(gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())).size == 0
    with pytest.raises(DataError, match="test files hold no images"):
        load_dataset("mnist", tmp_path, download=False)


# --------------------------------------------------------------------------- other inputs


@pytest.mark.timeout(20)
def test_a_fifo_or_dev_zero_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # nobody ever writes to it: reading it would block forever
    for source in (fifo, Path("/dev/zero")):
        with pytest.raises(ImageError, match="not a regular file"):
            load_image(source)


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mnist-cnn: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    tiny_model_file(run / "model.safetensors")
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3))
    )
    (run / "digit.png").write_bytes(digit_png(np.eye(28, dtype=np.uint8) * 255))
    return run


@pytest.mark.parametrize(
    "command", [["filters", "{run}"], ["plot", "{run}"], ["features", "{run}", "--image", "{png}"]]
)
def test_output_that_is_a_folder_or_not_a_picture_format_is_one_line(
    capsys, tmp_path, tiny_run, command
):
    argv = [a.format(run=tiny_run, png=tiny_run / "digit.png") for a in command]
    err = _one_line_error(capsys, [*argv, "-o", str(tmp_path)])
    assert "is a folder" in err
    err = _one_line_error(capsys, [*argv, "-o", str(tmp_path / "out.xyz")])
    assert "'.xyz' is not a picture format" in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left


def test_export_refuses_an_opset_it_cannot_write():
    # The onnx extra is part of the test setup (make setup installs it): a missing onnx fails here.
    import onnx  # noqa: F401

    from mnist_cnn.export import ExportError, check_opset

    with pytest.raises(ExportError, match="--opset 999: choose one from 18 to"):
        check_opset(999)
    with pytest.raises(ExportError, match="--opset 17: choose one from 18 to"):
        check_opset(17)
    check_opset(18)
    check_opset(None)


@pytest.mark.parametrize("device", ["cpu:abc", "cpu:²", "auto:0"])
def test_a_malformed_device_is_one_line(capsys, tiny_run, device):
    err = _one_line_error(
        capsys, ["predict", str(tiny_run), str(tiny_run / "digit.png"), "--device", device]
    )
    assert "device" in err


def test_project_errors_are_one_family():
    # The CLI prints one line for these; the tests above rely on it.
    for err in (CheckpointError, DataError, ImageError):
        assert issubclass(err, MnistCnnError)


# --------------------------------------------------------------------------- the report


def _write_png(target) -> None:
    data = digit_png(np.zeros((28, 28), dtype=np.uint8), scale=1)
    if hasattr(target, "write"):
        target.write(data)
    else:
        Path(target).write_bytes(data)


def test_script_in_run_files_never_reaches_the_report_unescaped(capsys, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    # The pictures are not the point here, and rendering them is most of a report's time.
    monkeypatch.setattr(Figure, "savefig", lambda self, target, **kw: _write_png(target))
    root = tmp_path / "data"
    write_dataset(root / "mnist", n_train=120, n_test=20)
    run = tmp_path / "run"
    run.mkdir()
    script = "<script>alert(1)</script>"
    # In the model's step field: the model file is refused, and no report is written.
    tiny_model_file(run / "model.safetensors", extra={"step": script})
    out = tmp_path / "report.html"
    argv = ["report", str(run), "-o", str(out), "--data-dir", str(root), "--device", "cpu"]
    assert "step must be a whole number" in _one_line_error(capsys, argv)
    assert not out.exists()
    # In config.json, which the report shows: escaped.
    tiny_model_file(run / "model.safetensors")
    (run / "config.json").write_text(json.dumps({"train": {}, "note": script, script: 1}))
    assert main(argv) == 0
    text = out.read_text()
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
