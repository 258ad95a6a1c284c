"""The draw-a-digit page as a static folder: ``mnist-cnn export RUN --web DIR``.

The folder holds the served page's own files (``index.html``, ``static/app.js``,
``static/style.css``) plus ``static/net.js`` (the network and MNIST's preprocessing in plain
JavaScript) and ``static/model.js`` (the weights). The page's front end is the one ``serve``
sends; it talks to the network in the page instead of the server's API when ``model.js`` is
there. Everything is loaded by ``<script>`` tags, nothing by ``fetch``, so the page works opened
from disk (``file://``) as well as from any static host, and asks nothing of any network.

``model.js`` sets ``window.MNIST_CNN_MODEL`` to a JSON object: the architecture and its config,
the class names, the run's name, step and test accuracy, ``tensors`` (name -> shape, dtype and
byte offset) and ``data``, the weights' little-endian bytes in base64, plus up to
``TEST_DIGITS`` test digits (uint8, base64) with their labels for the random-test-digit button.

Weights are float32 when the folder then stays within ``SIZE_BUDGET``, else float16 (``auto``).
The fast network (207 k parameters) fits as float32 (1.1 MB); the seed network (3.27 M) would be
17.5 MB as base64 float32, so it ships as float16 (8.7 MB): half the download, and on MNIST's
test digits the same classes as PyTorch's float32 (README, "Export"). Batch norm's running
statistics are folded into a per-channel scale and shift in float64, always stored as float32.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import load_model, model_file
from .errors import MnistCnnError
from .model import count_parameters

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_FILES = ("app.js", "style.css", "net.js")  # from static/, next to the written model.js
MODEL_SCRIPT = "model.js"
SCRIPTS_MARKER = "<!-- export-web: the in-page network's scripts go here -->"
SCRIPTS = (
    '<script src="static/model.js" defer></script>\n  <script src="static/net.js" defer></script>'
)
WEIGHT_CHOICES = ("auto", "fp32", "fp16")
SIZE_BUDGET = 10_000_000  # bytes: a page one can mail or host anywhere
TEST_DIGITS = 100  # test digits carried for the random-test-digit button (78 KB as uint8)


class WebExportError(MnistCnnError):
    """The page could not be written."""


@dataclass(frozen=True)
class WebExport:
    """What ``export_web`` wrote."""

    path: Path
    bytes: int  # the folder's total size
    dtype: str  # "float16" or "float32": how the weights were stored
    parameters: int
    test_digits: int


def web_tensors(model: nn.Module) -> dict[str, np.ndarray]:
    """The float32 arrays net.js reads: the weights, with batch norm folded into scale/shift."""
    state = {k: v.detach().to("cpu", torch.float64) for k, v in model.state_dict().items()}
    arch = model.config.arch
    if arch == "deep-mnist":
        names = [
            f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2") for p in ("weight", "bias")
        ]
        return {n: state[n].float().numpy() for n in names}
    if arch == "fast-cnn":
        # The third stage's layers exist only where the network has one.
        convs = [n for n in ("conv1", "conv2", "conv3", "fc1") if hasattr(model, n)]
        out = {f"{n}.weight": state[f"{n}.weight"].float().numpy() for n in convs}
        out["fc2.weight"] = state["fc2.weight"].float().numpy()
        out["fc2.bias"] = state["fc2.bias"].float().numpy()
        norms = [n for n in ("bn1", "bn2", "bn_conv3", "bn3") if hasattr(model, n)]
        for bn in norms:
            module = getattr(model, bn)
            scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + module.eps)
            shift = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
            out[f"{bn}.scale"] = scale.float().numpy()
            out[f"{bn}.shift"] = shift.float().numpy()
        return out
    raise WebExportError(f"the web page cannot run a {arch!r} network")


def _pack(tensors: dict[str, np.ndarray], half: bool) -> tuple[dict[str, Any], bytes]:
    """Tensor table and bytes; big weights as float16 when ``half`` (scale/shift stay float32)."""
    table: dict[str, Any] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, arr in tensors.items():
        as_half = half and not name.startswith("bn")
        data = arr.astype("<f2" if as_half else "<f4").tobytes()
        table[name] = {
            "shape": list(arr.shape),
            "dtype": "float16" if as_half else "float32",
            "byte_offset": offset,
        }
        chunks.append(data)
        offset += len(data)
        offset += (-offset) % 4  # keep every tensor 4-byte aligned
        chunks.append(b"\0" * ((-len(data)) % 4))
    return table, b"".join(chunks)


def _b64_size(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _run_facts(path: Path, meta: dict[str, Any]) -> tuple[str, list[str], float | None]:
    from .rundir import run_classes, run_test_accuracy

    dataset, classes = run_classes(path, meta)
    try:
        accuracy = run_test_accuracy(path)
    except MnistCnnError as err:  # the page works without it
        log.warning("no test accuracy shown: %s", err)
        accuracy = None
    return dataset, list(classes), accuracy


def _test_digits(dataset: str, data_dir: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    from .datasets import load_test_split

    try:
        test = load_test_split(dataset, data_dir, download=False)
    except MnistCnnError:
        return None
    # Spread over the whole test split (every k-th digit), the same ones on every export.
    n = len(test)
    indices = list(range(0, n, max(1, n // TEST_DIGITS)))[:TEST_DIGITS]
    images = test.images[indices].numpy().astype(np.uint8)
    return {
        "images": base64.b64encode(images.tobytes()).decode("ascii"),
        "labels": [int(v) for v in test.labels[indices].tolist()],
        "indices": indices,
    }


def model_script(
    run: str | os.PathLike[str],
    *,
    weights: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    test_digits: bool = True,
) -> tuple[str, WebExport]:
    """The text of ``model.js`` for RUN, and what it holds (``path`` and ``bytes`` unset)."""
    if weights not in WEIGHT_CHOICES:
        raise WebExportError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, not {weights!r}")
    path = model_file(run)
    model, meta = load_model(path, "cpu")
    tensors = web_tensors(model)
    page_bytes = sum((STATIC_DIR / f).stat().st_size for f in (*PAGE_FILES, "index.html"))
    fp32_bytes = sum(4 * a.size for a in tensors.values())
    half = weights == "fp16" or (
        weights == "auto" and _b64_size(fp32_bytes) + page_bytes + 200_000 > SIZE_BUDGET
    )
    table, data = _pack(tensors, half)
    dataset, classes, accuracy = _run_facts(path, meta)
    name = path.parent.name if path.name == "model.safetensors" else path.stem
    model_obj: dict[str, Any] = {
        "format": 1,
        "arch": model.config.arch,
        "config": model.config.to_dict(),
        "run": name,
        "dataset": dataset,
        "classes": classes,
        "step": meta.get("step") if isinstance(meta.get("step"), int) else None,
        "test_accuracy": accuracy,
        "tensors": table,
        "data": base64.b64encode(data).decode("ascii"),
        "test_digits": _test_digits(dataset, data_dir) if test_digits else None,
    }
    text = (
        "// The weights of one mnist-cnn run, for the page beside this file "
        "(written by 'mnist-cnn export --web').\n"
        f"window.MNIST_CNN_MODEL = {json.dumps(model_obj, separators=(',', ':'))};\n"
    )
    digits = model_obj["test_digits"]
    facts = WebExport(
        path=Path(),
        bytes=0,
        dtype="float16" if half else "float32",
        parameters=count_parameters(model),
        test_digits=len(digits["labels"]) if digits else 0,
    )
    return text, facts


def page_html() -> str:
    """The served page's index.html with the in-page network's scripts added."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    if SCRIPTS_MARKER not in html:
        raise WebExportError("static/index.html lacks the marker for the page's scripts")
    return html.replace(SCRIPTS_MARKER, SCRIPTS)


def _is_previous_export(folder: Path) -> bool:
    return (folder / "index.html").is_file() and (folder / "static" / MODEL_SCRIPT).is_file()


def export_web(
    run: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    weights: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    test_digits: bool = True,
) -> WebExport:
    """Write RUN's page as a static folder OUT_DIR (new, empty, or an earlier export: replaced).

    The folder is built beside OUT_DIR and renamed into place, so it is whole or absent.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WebExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_previous_export(out):
        raise WebExportError(
            f"{out}: folder is not empty and not an earlier 'export --web'; choose a new folder"
        )
    script, facts = model_script(run, weights=weights, data_dir=data_dir, test_digits=test_digits)
    html = page_html()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "static").mkdir()
        (tmp / "index.html").write_text(html, encoding="utf-8")
        for name in PAGE_FILES:
            shutil.copyfile(STATIC_DIR / name, tmp / "static" / name)
        (tmp / "static" / MODEL_SCRIPT).write_text(script, encoding="utf-8")
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return dataclasses.replace(facts, path=out, bytes=size)
