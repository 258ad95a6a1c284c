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


@pytest.fixture(scope="module")
def exported(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model_file`` exported once by ``mnist-cnn export`` (in this process)."""
    out = tmp_path_factory.mktemp("onnx") / "deep" / "model.onnx"
    assert main(["export", str(model_file), "-o", str(out)]) == 0
    return out


def _assert_matches(onnx_file: Path, model: torch.nn.Module, images: torch.Tensor) -> None:
    for n in (1, 37, 101):  # none of them the traced batch of 2: the batch axis is dynamic
        x = to_float(images[:n]).unsqueeze(1)
        with torch.inference_mode():
            expected = model(x)
        got = export.onnx_logits(onnx_file, x)
        assert got.shape == (n, 10)
        # fp32 on both sides; the two runtimes order sums differently: 1e-4 on logits of ~10.
        assert torch.allclose(got, expected, rtol=0, atol=1e-4), (got - expected).abs().max()
        assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.slow  # an ONNX export and its runtime: seconds (the fast tier skips it)
def test_cli_export_matches_pytorch_on_test_images(exported: Path, model_file: Path, mnist, capsys):
    assert [p.name for p in exported.parent.iterdir()] == ["model.onnx"]  # no temp left
    model, _ = load_model(model_file)
    _assert_matches(exported, model, mnist.test.images)

    # The file itself names its batch axis instead of fixing it.
    import onnx

    graph = onnx.load(str(exported)).graph
    (inp,), (outp,) = graph.input, graph.output
    assert inp.name == "images" and outp.name == "logits"
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim]
    assert isinstance(in_dims[0], str) and in_dims[1:] == [1, 28, 28]
    assert out_dims == [in_dims[0], 10]


@pytest.mark.slow  # an ONNX export and its runtime: seconds (the fast tier skips it)
def test_the_fast_preset_network_exports(tiny_fast_run: Path, tiny_data, tmp_path: Path, capsys):
    """Batch norm (folded in eval mode) and 3×3 kernels: the fast preset's network in ONNX."""
    out = tmp_path / "fast.onnx"
    assert main(["export", str(tiny_fast_run), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model, meta = load_model(tiny_fast_run)
    assert meta["model"]["arch"] == "fast-cnn"
    _assert_matches(out, model, tiny_data.test.images)


@pytest.mark.slow  # an ONNX export and its runtime: seconds (the fast tier skips it)
def test_the_check_refuses_a_file_of_another_network(exported: Path, model_file: Path):
    """The check that guards every export: a file whose logits differ is refused."""
    model, _ = load_model(model_file)
    with torch.no_grad():
        model.fc2.bias.add_(1e-3)  # every logit moves by 1e-3, ten times the tolerance
    with pytest.raises(export.ExportError, match="differ from PyTorch's"):
        export._check(model, exported)


def test_a_failed_export_leaves_the_old_file(model_file: Path, tmp_path: Path, monkeypatch):
    """The exporter fails after writing half a file: the old file stays, no temp is left."""
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")

    def half_then_fail(model, args, f, **kwargs):
        Path(f).write_bytes(b"half an onnx file")
        raise RuntimeError("exporter failed\nwith details")

    monkeypatch.setattr(torch.onnx, "export", half_then_fail)
    with pytest.raises(
        export.ExportError, match="ONNX export of .* failed: RuntimeError: exporter"
    ):
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
    err = capsys.readouterr().err
    # One line that names what is missing and the extra that brings it.
    assert err.count("\n") == 1 and err.startswith("mnist-cnn: error: ")
    assert "onnxscript" in err and "onnxruntime" not in err and "pip install -e '.[onnx]'" in err
    assert not (tmp_path / "m.onnx").exists()


def test_a_missing_run_is_one_line(tmp_path: Path, capsys):
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "no such run folder or file" in capsys.readouterr().err
