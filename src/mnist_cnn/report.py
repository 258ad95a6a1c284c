"""One self-contained HTML report of a run: settings, curves, accuracy, confusion, mistakes, maps.

Every picture is embedded as a base64 PNG and the style sheet is inline, so the file opens in
any browser with no server and no network, and can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import inspect as insp
from .checkpoint import load_model
from .datasets import load_dataset
from .device import device_description, select_device
from .errors import CheckpointError
from .fileio import atomic_write_bytes
from .plotting import figure_png
from .rundir import RunDir, run_classes

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


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _flatten(prefix: str, obj: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append((prefix, json.dumps(obj) if not isinstance(obj, str) else obj))


def _kv_table(obj: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    _flatten("", obj, rows)
    body = "".join(
        f'<tr><td class="k">{html.escape(k)}</td><td class="v">{html.escape(v)}</td></tr>'
        for k, v in rows
    )
    return f"<table><tr><th>setting</th><th>value</th></tr>{body}</table>"


def _confusion_table(confusion: np.ndarray, classes: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    rows = []
    for t, row in enumerate(confusion):
        cells = "".join(
            f'<td class="diag">{v}</td>' if p == t else f"<td>{v if v else ''}</td>"
            for p, v in enumerate(row.tolist())
        )
        n = int(row.sum())
        acc = f"{row[t] / n:.4f}" if n else "n/a"
        rows.append(f"<tr><th>{html.escape(classes[t])}</th>{cells}<td>{n}</td><td>{acc}</td></tr>")
    return (
        "<table><tr><th>true \\ predicted</th>"
        f"{head}<th>images</th><th>accuracy</th></tr>{''.join(rows)}</table>"
    )


def build_report(
    run: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    mistakes: int = 24,
) -> str:
    """The report of a run as one HTML string (evaluates the model on the test split)."""
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

    parts: list[str] = []
    add = parts.append
    step = meta.get("step", results.get("step") if results else None)
    add(f"<h1>mnist-cnn report: {html.escape(run_dir.name)}</h1>")
    add(
        f'<p class="sub">{html.escape(str(run_dir.resolve()))} · {html.escape(name)} · '
        f"model after {step if step is not None else '?'} steps · evaluated on "
        f"{html.escape(device_description(dev))}</p>"
    )

    add("<h2>Test accuracy</h2>")
    add(
        f'<p class="big">{accuracy:.4f} ({int(np.trace(confusion))}/{len(labels)} test images '
        f"right, error {100 * (1 - accuracy):.2f}%)</p>"
    )
    if results is not None and "test" in results:
        add(
            f'<p class="note">results.json, written when training ended: accuracy '
            f"{results['test']['accuracy']:.4f}</p>"
        )

    add("<h2>Training curves</h2>")
    try:
        records = folder.read_metrics()
    except CheckpointError:
        records = []
    if records:
        fig = insp.plot_training_curves(records, title=insp.run_curves_title(run_dir, records))
        add(_img(figure_png(fig), "training curves"))
    else:
        add('<p class="note">no metrics.jsonl records in this run folder.</p>')

    add("<h2>Per-class accuracy and confusion matrix</h2>")
    add("<p>Rows are the true class, columns the prediction; the diagonal is right.</p>")
    add(_confusion_table(confusion, classes))
    add(_img(figure_png(insp.plot_confusion(confusion, classes)), "confusion matrix"))

    add(f"<h2>The {len(worst)} most confident mistakes</h2>")
    add(
        "<p>Test images the network got wrong, ordered by how sure it was of its wrong answer. "
        "Title: true → predicted (probability), test index.</p>"
    )
    add(_img(figure_png(insp.plot_mistakes(worst, test.images.numpy(), classes)), "mistakes"))
    rows = "".join(
        f"<tr><td>{m.index}</td><td>{html.escape(classes[m.label])}</td>"
        f"<td>{html.escape(classes[m.predicted])}</td><td>{m.probability:.4f}</td></tr>"
        for m in worst
    )
    add(
        "<table><tr><th>test index</th><th>true</th><th>predicted</th><th>probability</th></tr>"
        f"{rows}</table>"
    )

    add("<h2>Feature maps</h2>")
    wanted = [c for c in FEATURE_CLASSES if c < len(classes)]
    idx = insp.first_of_each(test, wanted)
    digits = insp.split_digits(test, idx)
    add(
        "<p>The first test images of classes "
        + " and ".join(html.escape(classes[c]) for c in wanted)
        + ". Black is zero; each map is scaled to its own maximum.</p>"
    )
    for layer in ("conv1", "conv2"):
        fm = insp.feature_maps(model, digits, layer)
        add(f"<h3>{layer}</h3>")
        add(_img(figure_png(insp.plot_feature_maps(fm, classes=classes)), f"{layer} maps"))

    add("<h2>Learned conv1 filters</h2>")
    add(_img(figure_png(insp.plot_filters(insp.filters(model, "conv1"), "conv1")), "filters"))

    add("<h2>Configuration</h2>")
    add(_kv_table(config))

    body = "\n".join(parts)
    title = html.escape(f"mnist-cnn report: {run_dir.name}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
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
