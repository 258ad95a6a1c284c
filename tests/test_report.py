"""The HTML report: one self-contained file holding the run's settings, results and pictures."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from mnist_cnn import cli
from mnist_cnn.errors import CheckpointError


@pytest.mark.slow  # a whole document: seconds of drawing (the fast tier skips it)
def test_report_is_one_self_contained_file(tiny_run: Path, tiny_root: Path, tmp_path) -> None:
    """On the briefly trained run and its generated test set (101 images, some mislabelled, so
    there are mistakes to show): the report's numbers are the run's."""
    out = tmp_path / "deep" / "report.html"
    assert cli.main(["report", str(tiny_run), "-o", str(out), "--data-dir", str(tiny_root)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # Nothing fetched from anywhere: no external src/href, no scripts, no style sheets by link.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    # curves, confusion, mistakes, what made it say that, conv1 maps, conv2 maps, filters
    assert len(images) == 7
    for data in images:
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == "PNG"
    assert len(re.findall(r"<img ", text)) == len(images)
    # The numbers: the same test accuracy training recorded, per class, the confusion counts.
    results = json.loads((tiny_run / "results.json").read_text())
    accuracy = results["test"]["accuracy"]
    assert f'<p class="big">{accuracy:.4f} ' in text
    confusion = results["test"]["confusion"]
    for t, row in enumerate(confusion):
        cells = re.search(rf"<tr><th>{t}</th>(.*?)</tr>", text).group(1)
        values = re.findall(r"<td[^>]*>(\d*)</td>", cells)
        assert [int(v or 0) for v in values[:10]] == row
    # The configuration is there, setting by setting.
    config = json.loads((tiny_run / "config.json").read_text())
    assert f'<td class="k">train.lr</td><td class="v">{config["train"]["lr"]}</td>' in text
    # How the step was computed: the precision actually used, not only the one asked for.
    plan = config["plan"]
    assert "<h2>Training step</h2>" in text
    assert f'<td class="k">precision</td><td class="v">{plan["precision"]}</td>' in text
    assert "most confident mistakes" in text and "What made it say that" in text


def test_report_escapes_what_it_reads_from_the_run(tmp_path: Path, monkeypatch) -> None:
    """Every value from the run's files is text in the page, never markup (Jinja2 autoescape)."""
    from mnist_cnn import report
    from mnist_cnn.checkpoint import save_model
    from mnist_cnn.model import build_model
    from mnist_cnn.report import build_report

    from .idx_util import write_dataset

    # Drawing the six pictures is most of a report's cost and not what this test is about.
    for name in ("training_curves", "confusion", "mistakes", "feature_maps", "filters"):
        monkeypatch.setattr(report.insp, f"plot_{name}", lambda *a, **k: None)
    monkeypatch.setattr(report, "explain_mistakes", lambda *a, **k: None)
    monkeypatch.setattr(report, "figure_png", lambda fig: b"picture")

    write_dataset(tmp_path / "data" / "mnist", n_train=120, n_test=60)
    run = tmp_path / "run"
    run.mkdir()
    save_model(run / "model.safetensors", build_model(), {"step": 3})
    attack = "<script>alert(1)</script>"
    config = {"train": {"dataset": "mnist", "lr": 1e-4}, "environment": {"device": attack}}
    (run / "config.json").write_text(json.dumps(config))
    record = {"step": 0, "loss": None, "train_accuracy": 0.1, "val_accuracy": 0.1, "seconds": 0}
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    text = build_report(run, data_dir=tmp_path / "data", device="cpu")
    assert "<script" not in text.lower()
    assert '<td class="v">&lt;script&gt;alert(1)&lt;/script&gt;</td>' in text
    assert "written when training ended" not in text
    assert text.count('src="data:image/png;base64,cGljdHVyZQ=="') == 7  # every picture slot
    # A wrong type in results.json is refused in one line, before any of it reaches the page.
    (run / "results.json").write_text(json.dumps({"test": {"accuracy": attack}}))
    with pytest.raises(CheckpointError, match="results.json: no test accuracy") as err:
        build_report(run, data_dir=tmp_path / "data", device="cpu")
    assert "\n" not in str(err.value)
