"""A dataset other than MNIST, end to end: its name is recorded with the run, and its class
names reach every command that shows a class (evaluate, predict, features, report, serve).

Generated Fashion-MNIST-shaped files (``tiny_root``), trained through the CLI in this process
with the fast preset (cheap to evaluate): what is tested is where the names go, not accuracy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mnist_cnn.cli import main
from mnist_cnn.datasets import DATASETS

CLASSES = DATASETS["fashion-mnist"].classes  # "T-shirt/top", ..., "Ankle boot"


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> Path:
    run = tmp_path_factory.mktemp("fashion") / "run"
    args = ["train", "--preset", "fast", "--dataset", "fashion-mnist", "--data-dir", str(tiny_root)]
    args += ["--steps", "30", "--batch-size", "32", "--seed", "0", "--device", "cpu"]
    assert main([*args, "--out", str(run)]) == 0
    return run


def test_the_run_records_its_dataset(fashion_run: Path) -> None:
    config = json.loads((fashion_run / "config.json").read_text())
    assert config["train"]["dataset"] == "fashion-mnist"
    assert config["dataset"]["name"] == "fashion-mnist"
    assert config["dataset"]["test"] == 101


def test_evaluate_uses_the_runs_dataset_and_names(fashion_run: Path, tiny_root: Path, capsys):
    data = ["--data-dir", str(tiny_root)]
    assert main(["evaluate", str(fashion_run), "--json", *data]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "fashion-mnist" and report["classes"] == list(CLASSES)
    assert report["total"] == 101
    assert main(["evaluate", str(fashion_run), *data]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fashion-mnist test: accuracy")
    for name in CLASSES:
        assert f"class {name:>11}: " in out, name


def test_predict_and_features_name_the_class(
    fashion_run: Path, tiny_root: Path, tmp_path: Path, capsys
) -> None:
    picture = np.full((60, 60), 255, np.uint8)
    picture[10:50, 20:40] = 0  # dark ink on white paper
    path = tmp_path / "thing.png"
    Image.fromarray(picture).save(path)
    assert main(["predict", str(fashion_run), str(path), "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["prediction"] in CLASSES
    assert {t["class"] for t in record["top"]} <= set(CLASSES)

    out = tmp_path / "maps.png"
    args = ["--data-dir", str(tiny_root), "--index", "0", "-o", str(out)]
    assert main(["features", str(fashion_run), *args]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    true, predicted = re.search(r"true (.+), predicted (.+) \(p = ", line).groups()
    assert true in CLASSES and predicted in CLASSES, line


@pytest.mark.slow  # a whole document: seconds of drawing (the fast tier skips it)
def test_report_shows_the_class_names(fashion_run: Path, tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(fashion_run), "-o", str(out), "--data-dir", str(tiny_root)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "fashion-mnist" in text
    for name in CLASSES:  # the confusion matrix's rows and columns
        assert f"<th>{name}</th>" in text, name


def test_serve_gives_the_names_and_the_datasets_test_pictures(
    fashion_run: Path, tiny_root: Path
) -> None:
    from mnist_cnn.datasets import load_dataset
    from mnist_cnn.serve import create_app

    test = load_dataset("fashion-mnist", tiny_root, download=False).test
    app = create_app(fashion_run, data_dir=tiny_root)
    with TestClient(app, base_url="http://127.0.0.1") as c:  # a loopback Host
        info = c.get("/api/info").json()
        assert info["dataset"] == "fashion-mnist" and info["classes"] == list(CLASSES)
        assert info["test_digits"] == 101
        body = c.get("/api/random-test-digit?index=7").json()
        assert body["label"] == int(test.labels[7])
