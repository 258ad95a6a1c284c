"""``mnist-cnn export RUN --web DIR``: the page opened from disk runs the run's own network.

The browser tests open the folder in headless Chromium from ``file://`` (as people will): the
page's network must give PyTorch's classes and logits, its preprocessing Python's, and a digit
drawn with the mouse must be read. They fail (never skip) without Chromium and Playwright.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_cnn.checkpoint import load_model, save_model
from mnist_cnn.cli import main
from mnist_cnn.export_web import (
    SIZE_BUDGET,
    WebExportError,
    export_web,
    model_script,
    web_tensors,
)
from mnist_cnn.model import FastCNN, build_model
from mnist_cnn.preprocess import preprocess_image

from .test_serve_live import COUNT_LIT, shows, stroke, until

LOGIT_TOLERANCE = 1e-3  # fp32 weights: JavaScript's sums differ from PyTorch's only by rounding
# fp16 weights: each weight rounded to 11 significant bits. Measured on a 600-step seed network
# over 500 test digits (benchmarks/web_page.py): largest logit change 0.0038; 5× that here.
FP16_LOGIT_TOLERANCE = 0.02
PREPROCESS_TOLERANCE = 1  # gray levels (of 255): float32 sums in another order may round apart
# The page's network on test digits: the fast preset's is cheap in JavaScript, the seed
# network's costs ~25 ms a digit (every code path is met on the first digit; the rest guard
# against sums that drift on some inputs only: 50 of each of its two weight formats).
N_IMAGES = 500
N_SEED_IMAGES = 50


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights and batch-norm statistics moved off their initial values, so no layer is trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen) * 1.5)
    return model


@pytest.fixture(scope="module")
def fast_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fast-preset network (batch norm) with perturbed weights and running statistics."""
    path = tmp_path_factory.mktemp("web") / "fast.safetensors"
    save_model(path, _perturbed(FastCNN(), 3))
    return path


@pytest.fixture(scope="module")
def two_stage_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fast network without its third stage (conv3_channels 0), as runs made before it."""
    path = tmp_path_factory.mktemp("web") / "two-stage.safetensors"
    config = dataclasses.replace(FastCNN().config, conv3_channels=0)
    save_model(path, _perturbed(FastCNN(config), 5))
    return path


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("web") / "seed.safetensors"
    save_model(path, _perturbed(build_model(), 4))
    return path


def _model_object(script: str) -> dict:
    prefix = "window.MNIST_CNN_MODEL = "
    line = next(li for li in script.splitlines() if li.startswith(prefix))
    return json.loads(line[len(prefix) :].rstrip(";"))


# --------------------------------------------------------------------------- without a browser


def test_folder_holds_the_served_page_and_the_weights(seed_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "page"
    assert main(["export", str(seed_file), "--web", str(out), "--data-dir", "/nonexistent"]) == 0
    printed = capsys.readouterr().out
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "index.html",
        "static/app.js",
        "static/model.js",
        "static/net.js",
        "static/style.css",
    ]
    size = sum((out / f).stat().st_size for f in files)
    assert f"{size / 1e6:.1f} MB" in printed and "float16" in printed
    assert size < SIZE_BUDGET  # the seed network as fp16: 8.8 MB
    html = (out / "index.html").read_text()
    # The served page's front end, with the network's scripts loaded before it, all relative.
    assert html.index("static/model.js") < html.index("static/net.js") < html.index("static/app.js")
    assert 'src="/' not in html and 'href="/static' not in html and "http" not in html
    src = Path(__file__).resolve().parent.parent / "src" / "mnist_cnn" / "static"
    assert (out / "static" / "app.js").read_bytes() == (src / "app.js").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_weights_round_trip_and_batch_norm_folds(fast_file: Path):
    script, facts = model_script(fast_file, weights="fp16", test_digits=False)
    obj = _model_object(script)
    data = base64.b64decode(obj["data"])
    model, _ = load_model(fast_file)
    expected = web_tensors(model)
    assert set(obj["tensors"]) == set(expected) and facts.parameters == 426_362
    assert {"conv3.weight", "bn_conv3.scale", "bn_conv3.shift"} <= set(expected)
    for name, spec in obj["tensors"].items():
        dtype = "<f2" if spec["dtype"] == "float16" else "<f4"
        n = int(np.prod(spec["shape"]))
        got = np.frombuffer(data, dtype, n, spec["byte_offset"]).reshape(spec["shape"])
        want = expected[name]
        # Batch norm's folded scale and shift stay float32; the rest is rounded to fp16.
        assert spec["dtype"] == ("float32" if name.startswith("bn") else "float16"), name
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(dtype).astype(np.float32))
    # Folding: scale·x + shift is batch norm in eval mode.
    x = torch.randn(5, 16, 14, 14)
    bn = model.bn1
    with torch.inference_mode():
        folded = x * torch.from_numpy(expected["bn1.scale"])[:, None, None]
        folded += torch.from_numpy(expected["bn1.shift"])[:, None, None]
        assert torch.allclose(folded, bn(x), atol=1e-5)


def test_refuses_a_folder_that_is_not_an_export(seed_file: Path, tmp_path: Path, capsys):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    assert main(["export", str(seed_file), "--web", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and err.count("\n") == 1
    assert keep.read_text() == "mine"
    with pytest.raises(WebExportError, match="not a folder"):
        export_web(seed_file, keep)
    # An earlier export is replaced whole.
    out = tmp_path / "page"
    export_web(seed_file, out, test_digits=False)
    (out / "static" / "stale.js").write_text("")
    export_web(seed_file, out, test_digits=False)
    assert not (out / "static" / "stale.js").exists()


# --------------------------------------------------------------------------- in Chromium


def _open(browser, folder: Path):
    page = browser.new_page(viewport={"width": 1240, "height": 1000})
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto((folder / "index.html").as_uri())
    until(page, "document.getElementById('run-info').textContent.startsWith('run ')")
    return page, requests, problems


def _page_logits(page, images: torch.Tensor) -> np.ndarray:
    b64 = base64.b64encode(images.numpy().astype(np.uint8).tobytes()).decode()
    logits = page.evaluate(
        """(b64) => {
            const net = MnistNet.load(window.MNIST_CNN_MODEL);
            return Array.from(MnistNet.logitsBatch(net, MnistNet.decodeBase64(b64)));
        }""",
        b64,
    )
    return np.asarray(logits, dtype=np.float64).reshape(len(images), -1)


@pytest.mark.slow
def test_page_network_gives_pytorch_logits(
    browser, trained_run: Path, fast_file: Path, two_stage_file: Path, mnist, tmp_path: Path
):
    cases = [
        (trained_run, "fp32", LOGIT_TOLERANCE, N_SEED_IMAGES),
        (trained_run, "fp16", FP16_LOGIT_TOLERANCE, N_SEED_IMAGES),
        (fast_file, "fp32", LOGIT_TOLERANCE, N_IMAGES),  # three conv stages
        (two_stage_file, "fp32", LOGIT_TOLERANCE, N_SEED_IMAGES),
    ]
    for run, weights, tolerance, n in cases:
        images = mnist.test.images[:n]
        out = tmp_path / f"{run.name}-{weights}"
        export_web(run, out, weights=weights, test_digits=False)
        model, _ = load_model(run)
        with torch.inference_mode():
            expected = model(images.float().div(255)).double().numpy()
        page, requests, problems = _open(browser, out)
        got = _page_logits(page, images)
        page.close()
        assert (got.argmax(1) == expected.argmax(1)).all(), (run.name, weights)
        worst = float(np.abs(got - expected).max())
        assert worst <= tolerance, (run.name, weights, worst)
        assert all(u.startswith(out.as_uri()) for u in requests), requests
        assert not problems, problems


@pytest.mark.slow
def test_draw_on_the_page_from_disk(browser, trained_run: Path, tmp_path: Path):
    out = tmp_path / "page"
    done = export_web(trained_run, out)  # auto: the seed network as fp16
    assert done.dtype == "float16" and done.bytes < SIZE_BUDGET and done.test_digits == 100
    page, requests, problems = _open(browser, out)
    assert "running in this page" in page.inner_text("#run-info")
    assert page.locator("header nav").count() == 0  # no API link without a server

    box = page.locator("#pad").bounding_box()
    stroke(page, [(70, 60), (215, 60), (120, 245)], box)  # a 7
    shows(page, "7")
    until(page, f"({COUNT_LIT})('conv2')[0] > 0")
    lit, total = page.evaluate(f"({COUNT_LIT})('conv1')")
    assert total == 32 * 28 * 28 and lit > 0.05 * total

    # The page's preprocessing of what is on the pad, against Python's on the same pixels.
    pad, seen = page.evaluate(
        """() => {
            const c = document.getElementById('pad');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const gray = [];
            for (let i = 0; i < d.length; i += 4) gray.push(d[i]);
            const x = MnistNet.preprocess(MnistNet.grayFromRGBA(d, c.height, c.width), c.height,
                                          c.width);
            return [gray, Array.from(x)];
        }"""
    )
    pad = np.asarray(pad, dtype=np.uint8).reshape(280, 280)
    assert 0 < (pad > 0).mean() < 0.5  # a drawing, not a blank or a filled pad
    expected = preprocess_image(pad).astype(int)
    diff = np.abs(np.asarray(seen).reshape(28, 28) - expected)
    assert diff.max() <= PREPROCESS_TOLERANCE, diff.max()
    shown = page.evaluate(
        """() => Array.from(document.getElementById('input').getContext('2d')
                 .getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0))"""
    )
    assert np.abs(np.asarray(shown).reshape(28, 28) - expected).max() <= PREPROCESS_TOLERANCE

    page.click("#clear")
    stroke(page, [(145, 35), (138, 245)], box)  # a 1
    shows(page, "1")

    page.click("#random")
    until(page, "document.getElementById('source').textContent.startsWith('Test image #')")
    assert page.inner_text("#prediction") != "–"

    times = page.evaluate("() => window.mnistCnnUpdateTimes")
    assert len(times) >= 2
    print(f"update times in Chromium (ms): {[round(t, 1) for t in times]}")
    assert all(u.startswith(out.as_uri()) for u in requests), requests  # nothing outside DIR
    assert not problems, problems
    page.close()
