"""docs/tour.ipynb: it runs top to bottom, and the committed copy keeps its pictures."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
TOUR = REPO / "docs" / "tour.ipynb"
MAX_BYTES = 1_500_000
# colormaps, conv1 maps of a 6 and a 9, filters, curves, mistakes, the drawing
PICTURES = 6


def _make_tour():
    spec = importlib.util.spec_from_file_location("make_tour", REPO / "docs" / "make_tour.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(cell) -> str:
    return "".join(
        o.get("text", "")
        if o.output_type == "stream"
        else "".join(o.get("data", {}).get("text/plain", ""))
        for o in cell.get("outputs", [])
    )


def _missing_pictures(nb) -> list[str]:
    """First lines of the cells that draw a figure (call ``show``) but hold no PNG output."""
    return [
        c.source.splitlines()[0]
        for c in nb.cells
        if c.cell_type == "code"
        and re.search(r"^\s*show\(", c.source, re.MULTILINE)
        and not any("image/png" in o.get("data", {}) for o in c.outputs)
    ]


def _pictures(nb) -> int:
    return sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def _errors(nb) -> list[str]:
    return [
        f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]


def _cell_with(nb, needle: str):
    hits = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(hits) == 1, f"expected one code cell containing {needle!r}, found {len(hits)}"
    return hits[0]


def test_committed_tour_keeps_its_outputs() -> None:
    """Every code cell ran, in order, without error, from one real run that says its step count.

    Fails when someone edits the notebook without regenerating it (`make tour`).
    """
    assert TOUR.stat().st_size < MAX_BYTES, f"{TOUR} is {TOUR.stat().st_size:,} bytes"
    nb = nbformat.read(TOUR, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"not run top to bottom: {counts}"
    assert _errors(nb) == []
    assert _missing_pictures(nb) == []
    assert _pictures(nb) >= PICTURES
    stated = re.search(r"^(\d+) training steps on ", _text(code[0]), re.MULTILINE)
    assert stated, "the first cell must print the step count"
    trained = re.search(r"trained (\d+) steps", _text(_cell_with(nb, "result = train(")))
    assert trained and trained.group(1) == stated.group(1)
    assert int(stated.group(1)) >= 1000, "the committed pictures come from a real run"


@pytest.mark.slow
def test_tour_runs_top_to_bottom(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny run (5 steps, 100 held-out images) of the whole notebook in a fresh kernel."""
    monkeypatch.setenv("MNIST_CNN_DATA", str(data_root))
    nb = _make_tour().execute(TOUR, steps=5, eval_images=100, timeout=300)
    assert _errors(nb) == []  # execute() raises first; this guards a swallowed error
    assert _missing_pictures(nb) == []
    assert _pictures(nb) >= PICTURES

    log = _text(_cell_with(nb, "result = train("))
    assert re.search(r"^step 0, training accuracy [\d.]+, validation accuracy", log, re.M)
    assert "trained 5 steps" in log

    # The tutorial's loss is NaN on a confidently wrong answer; loss_fn is the finite 120.
    loss = _text(_cell_with(nb, "loss_fn(wrong, truth)"))
    assert re.search(r"tutorial's loss: nan", loss)
    assert float(re.search(r"loss_fn: +([\d.]+)", loss).group(1)) == pytest.approx(120, abs=1e-3)

    # Batch 100 and one batch of everything give the same count, with memory measured.
    lines = _text(_cell_with(nb, "for r in (result.test, at_once)")).splitlines()
    assert len(lines) == 2, lines
    counts = [re.search(r"\((\d[\d,]*)/100\)", ln).group(1) for ln in lines]
    assert counts[0] == counts[1], lines
    assert all("memory" in ln for ln in lines)
