"""ONNX export: ``mnist-cnn export RUN -o model.onnx`` (optional extra: ``mnist-cnn[onnx]``).

The file takes ``images``: float32 (batch, 1, 28, 28) with pixels in [0, 1] (uint8 / 255) and
gives ``logits``: float32 (batch, 10); the batch dimension is dynamic. It is written with
PyTorch's ``torch.export``-based exporter (the default since PyTorch 2.9; the older TorchScript
exporter is deprecated), which needs ``onnxscript``, as one self-contained file (weights
inside), through a temp file and a rename. Before the rename the file is run with onnxruntime on
a few batch sizes and must give PyTorch's logits within ``CHECK_TOLERANCE``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from .checkpoint import load_model
from .datasets import IMAGE_SIZE
from .errors import MnistCnnError
from .fileio import atomic_path

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'mnist-cnn[onnx]'"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
CHECK_TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| logit difference accepted
CHECK_BATCH_SIZES = (1, 3, 64)  # differ from the traced batch: proves the axis is dynamic
TRACE_BATCH = 2
MIN_OPSET = 18  # the opset the torch.export-based exporter's operators are written for


class ExportError(MnistCnnError):
    """The export could not be made or does not reproduce the PyTorch model."""


def require_onnx() -> None:
    """A one-line ExportError naming the pip command if an export dependency is missing."""
    import importlib.util

    missing = [
        m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: {INSTALL_HINT}")


def onnx_logits(path: str | os.PathLike[str], images: torch.Tensor) -> torch.Tensor:
    """Run an exported file with onnxruntime on float images (N, 1, 28, 28); returns logits."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run([OUTPUT_NAME], {INPUT_NAME: images.detach().cpu().float().numpy()})[0]
    return torch.from_numpy(out)


def export_onnx(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    opset: int | None = None,
) -> Path:
    """Export RUN's network (folder or ``.safetensors`` file) to ONNX at ``out``; returns ``out``.

    ``opset``: the ONNX opset version (default: the exporter's). The file is checked against
    PyTorch with onnxruntime before it replaces ``out``.
    """
    require_onnx()
    check_opset(opset)
    model, _ = load_model(run, "cpu")  # eval mode: dropout off
    out = Path(out)
    example = torch.rand(TRACE_BATCH, 1, IMAGE_SIZE, IMAGE_SIZE)
    batch = torch.export.Dim("batch")
    # The exporter logs every torchvision op it skips registering: noise for this network.
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with atomic_path(out) as tmp, warnings.catch_warnings():
            # PyTorch's own deprecation notices from inside the exporter: nothing a user can fix.
            warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            try:
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=True,
                    external_data=False,  # one file (13 MB), far below protobuf's 2 GB limit
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: batch},),
                    opset_version=opset,
                    verbose=False,
                )
            except Exception as err:
                raise ExportError(f"ONNX export of {run} failed: {_gist(err)}") from None
            _check_written_opset(tmp, opset)
            _check(model, tmp)
    finally:
        quiet.setLevel(level)
    log.info("exported %s to %s", run, out)
    return out


def check_opset(opset: int | None) -> None:
    """ExportError unless ``opset`` is one the exporter writes and the installed onnx knows.

    The exporter's operators are written for opset ``MIN_OPSET``; asked for another, it converts,
    and where it cannot it falls back to its own with a page of warnings. Refuse up front.
    """
    if opset is None:
        return
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if type(opset) is not int or not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"--opset {opset}: choose one from {MIN_OPSET} to {newest} "
            f"(the installed onnx {onnx.__version__} knows up to {newest})"
        )


def _check_written_opset(path: Path, opset: int | None) -> None:
    import onnx

    if opset is None:
        return
    written = {
        o.domain: o.version for o in onnx.load(str(path), load_external_data=False).opset_import
    }
    if written.get("", written.get("ai.onnx")) != opset:
        raise ExportError(
            f"the exporter wrote opset {written.get('', '?')}, not the asked-for {opset}; "
            "not written"
        )


def _check(model: torch.nn.Module, path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    for n in CHECK_BATCH_SIZES:
        images = torch.rand(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
        with torch.inference_mode():
            expected = model(images)
        try:
            got = onnx_logits(path, images)
        except Exception as err:  # onnxruntime's own error types; say what failed, in one line
            raise ExportError(f"onnxruntime cannot run the exported file: {_gist(err)}") from None
        if got.shape != expected.shape:
            raise ExportError(
                f"the ONNX file gives logits of shape {tuple(got.shape)} for batch {n}"
            )
        diff = float((got - expected).abs().max())
        if not diff <= CHECK_TOLERANCE:
            raise ExportError(
                f"the ONNX file's logits differ from PyTorch's by {diff:.3g} at batch {n} "
                f"(more than {CHECK_TOLERANCE:g}); not written"
            )


def _gist(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
