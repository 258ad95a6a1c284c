"""ONNX export: onnxruntime gives PyTorch's logits on real test images at several batch sizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mnist_cnn import export
from mnist_cnn.checkpoint import load_model, save_model
from mnist_cnn.cli import main
from mnist_cnn.datasets import to_float
from mnist_cnn.model import build_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed network with its initial weights, perturbed so no two layers look alike."""
    torch.manual_seed(11)
    model = build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    save_model(path, model)
    return path


def test_cli_export_matches_pytorch_on_test_images(model_file: Path, tmp_path: Path, mnist, capsys):
    out = tmp_path / "deep" / "model.onnx"
    assert main(["export", str(model_file), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # one file, no temp left

    model, _ = load_model(model_file)
    for n in (1, 37, 256):  # none of them the traced batch of 2: the batch axis is dynamic
        images = to_float(mnist.test.images[:n]).unsqueeze(1)
        with torch.inference_mode():
            expected = model(images)
        got = export.onnx_logits(out, images)
        assert got.shape == (n, 10)
        assert torch.allclose(got, expected, rtol=0, atol=1e-4), (got - expected).abs().max()
        assert torch.equal(got.argmax(1), expected.argmax(1))

    # The file itself names its batch axis instead of fixing it.
    import onnx

    graph = onnx.load(str(out)).graph
    (inp,), (outp,) = graph.input, graph.output
    assert inp.name == "images" and outp.name == "logits"
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim]
    assert isinstance(in_dims[0], str) and in_dims[1:] == [1, 28, 28]
    assert out_dims == [in_dims[0], 10]


def test_a_failed_export_leaves_the_old_file(model_file: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")
    monkeypatch.setattr(export, "CHECK_TOLERANCE", -1.0)  # no file can pass the check
    with pytest.raises(export.ExportError, match="differ from PyTorch's"):
        export.export_onnx(model_file, out)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_without_the_extra_the_cli_says_what_to_install(
    model_file: Path, tmp_path: Path, monkeypatch, capsys
):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real_find_spec(name, *a),
    )
    assert main(["export", str(model_file), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "mnist-cnn: error: ONNX export needs onnxscript: "
        "pip install -e '.[onnx]' in the project's folder"
    )
    assert not (tmp_path / "m.onnx").exists()


def test_a_missing_run_is_one_line(tmp_path: Path, capsys):
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "no such run folder or file" in capsys.readouterr().err
