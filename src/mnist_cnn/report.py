"""One self-contained HTML report of a run: settings, curves, accuracy, confusion, mistakes, maps.

Every picture is embedded as a base64 PNG and the style sheet is inline, so the file opens in
any browser with no server and no network, and can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from . import inspect as insp
from .checkpoint import load_model
from .datasets import load_dataset
from .device import device_description, select_device
from .errors import CheckpointError
from .explain import mistake_explanations as explain_mistakes
from .fileio import atomic_write_bytes
from .plotting import figure_png
from .rundir import RunDir, run_classes
from .templates import environment

REPORT_FILE = "report.html"
FEATURE_CLASSES = (6, 9)  # the seed compared a 6 with a 9

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1150px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; margin-top: 2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td.k { text-align: left; font-family: ui-monospace, monospace; }
td.v { text-align: left; font-family: ui-monospace, monospace; }
td.diag { background: #e3eefb; font-weight: 600; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
.big { font-size: 1.3em; font-weight: 600; }
.note { color: #666; font-size: .9em; }
"""


def _img(png: bytes, alt: str) -> dict[str, str]:
    return {"alt": alt, "data": base64.b64encode(png).decode("ascii")}


def _flatten(prefix: str, obj: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append((prefix, json.dumps(obj) if not isinstance(obj, str) else obj))


PLAN_KEYS = ("precision", "requested", "plain", "channels_last", "bf16_weights", "fused_adam")
PLAN_KEYS += ("freed_memory_kept", "cuda_graph")
PLAN_KEYS += ("device", "hardware", "bf16", "threads")


def _plan_rows(plan: Any) -> list[tuple[str, str]]:
    """How the run's training step was computed (config.json's "plan"), key by key."""
    if not isinstance(plan, dict):
        return []
    rows: list[tuple[str, str]] = []
    for key in PLAN_KEYS:
        if key in plan:
            _flatten(key, plan[key], rows)
    return rows


def build_report(
    run: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    mistakes: int = 24,
) -> str:
    """The report of a run as one HTML string (evaluates the model on the test split).

    Rendered from ``templates/report.html.j2`` with autoescaping: every value read from the
    run's files is escaped; only the style sheet and the pictures' base64 are inserted as is.
    """
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run}: not a run folder")
    dev = select_device(device)
    model, meta = load_model(run_dir, dev)
    folder = RunDir(run_dir)
    try:
        config = folder.read_config()
    except CheckpointError:  # a bare model in a folder: describe the network alone
        config = {"model": meta.get("model", {})}
    results = folder.read_results()
    name, classes = run_classes(run_dir, meta)
    data = load_dataset(name, data_dir)
    test = data.test

    probs = insp.predict_probabilities(model, test.images, device=dev)
    pred = probs.argmax(1)
    labels = test.labels.numpy()
    confusion = insp.confusion_matrix(labels, pred, len(classes))
    accuracy = float((pred == labels).mean())
    worst = insp.confident_mistakes(probs, labels, k=mistakes)

    try:
        records = folder.read_metrics()
    except CheckpointError:
        records = []
    curves = None
    if records:
        fig = insp.plot_training_curves(records, title=insp.run_curves_title(run_dir, records))
        curves = _img(figure_png(fig), "training curves")

    recorded = None
    if isinstance(results, dict) and isinstance(results.get("test"), dict):
        value = results["test"].get("accuracy")
        recorded = float(value) if isinstance(value, (int, float)) else None

    wanted = [c for c in FEATURE_CLASSES if c < len(classes)]
    digits = insp.split_digits(test, insp.first_of_each(test, wanted))
    feature_maps = []
    for layer in ("conv1", "conv2"):
        fm = insp.feature_maps(model, digits, layer)
        feature_maps.append(
            (layer, _img(figure_png(insp.plot_feature_maps(fm, classes=classes)), f"{layer} maps"))
        )

    settings: list[tuple[str, str]] = []
    _flatten("", config, settings)
    rows = []
    for t, row in enumerate(confusion):
        n = int(row.sum())
        rows.append(
            {"cells": row.tolist(), "true": t, "n": n, "accuracy": row[t] / n if n else None}
        )
    step = meta.get("step", results.get("step") if isinstance(results, dict) else None)
    template = environment().get_template("report.html.j2")
    return template.render(
        css=Markup(_CSS),
        name=run_dir.name,
        path=str(run_dir.resolve()),
        dataset=name,
        step=step,
        device=device_description(dev),
        accuracy=accuracy,
        correct=int(np.trace(confusion)),
        total=len(labels),
        recorded_accuracy=recorded,
        curves=curves,
        classes=classes,
        confusion=rows,
        confusion_picture=_img(figure_png(insp.plot_confusion(confusion, classes)), "confusion"),
        mistakes=worst,
        mistakes_picture=_img(
            figure_png(insp.plot_mistakes(worst, test.images.numpy(), classes)), "mistakes"
        ),
        # What made it say that: the wrong answer's evidence beside the true class's.
        mistakes_why=_img(
            figure_png(explain_mistakes(model, test.images.numpy(), worst, classes)), "why"
        )
        if worst
        else None,
        feature_classes=[classes[c] for c in wanted],
        feature_maps=feature_maps,
        filters=_img(
            figure_png(insp.plot_filters(insp.filters(model, "conv1"), "conv1")), "filters"
        ),
        settings=settings,
        plan=_plan_rows(config.get("plan") if isinstance(config, dict) else None),
    )


def write_report(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> Path:
    """Build the report and write it atomically (default ``<run>/report.html``)."""
    path = Path(out) if out is not None else Path(run) / REPORT_FILE
    text = build_report(run, data_dir=data_dir, device=device)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
