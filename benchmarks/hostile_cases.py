"""Hostile files and arguments against the command line: the table in docs/reliability.md.

Each case builds its hostile input in a temp folder, runs one ``mnist-cnn`` command in this
process (as ``mnist_cnn.cli.main``), and records the outcome: the exit status, the error line,
whether anything other than one line reached stderr (a traceback), and how long it took (a
60 s alarm stands for a hang). Exit status 1 when any case breaks the promise: one line on
stderr, a non-zero status, no traceback, nothing written.

    PYTHONPATH=src python benchmarks/hostile_cases.py [--markdown]

The server's cases are measured by benchmarks/serve_memory.py.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from mnist_cnn.cli import main as cli_main  # noqa: E402
from tests.hostile_util import (  # noqa: E402
    digit_png,
    join_safetensors,
    split_safetensors,
    tiny_model_file,
    with_meta,
)
from tests.idx_util import write_dataset  # noqa: E402

HANG_S = 60


@dataclass
class Outcome:
    case: str
    command: str
    status: int | str
    stderr: str
    seconds: float
    ok: bool


class Hang(Exception):
    pass


def run(argv: list[str]) -> tuple[int | str, str, float]:
    """(exit status or 'traceback'/'hang', what reached stderr, seconds)."""
    err = io.StringIO()
    out = io.StringIO()

    def alarm(*_):
        raise Hang

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_S)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            status: int | str = cli_main(argv)
    except Hang:
        status = "hang"
    except SystemExit as exc:  # argparse usage errors
        status = int(exc.code or 0)
    except BaseException:  # noqa: BLE001 - what would reach the user as a traceback
        status = "traceback"
        err.write(traceback.format_exc())
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return status, err.getvalue(), time.perf_counter() - t0


def cases(tmp: Path) -> list[tuple[str, list[str], Callable[[], bool]]]:
    """(description, argv, extra check that nothing was written) for each case."""
    model = tiny_model_file(tmp / "model.safetensors")
    good = model.read_bytes()
    png = tmp / "digit.png"
    png.write_bytes(digit_png(np.eye(28, dtype=np.uint8) * 255))
    nothing = lambda: True  # noqa: E731

    def model_with(name: str, meta: dict, model_edit: dict | None = None) -> str:
        path = tmp / f"{name}.safetensors"
        path.write_bytes(with_meta(good, meta, model_edit=model_edit))
        return str(path)

    def header_with(name: str, edit: Callable[[dict], None]) -> str:
        header, body = split_safetensors(good)
        edit(header)
        path = tmp / f"{name}.safetensors"
        path.write_bytes(join_safetensors(header, body))
        return str(path)

    def predict(path: str, *more: str) -> list[str]:
        return ["predict", path, str(png), *more]

    out: list[tuple[str, list[str], Callable[[], bool]]] = []
    for field, value in [
        ("hidden", 250_000),
        ("hidden", -5),
        ("hidden", "1024"),
        ("dropout", 5.0),
        ("num_classes", 20),
        ("kernel_size", 3),
    ]:
        out.append(
            (
                f"model metadata {field} = {value!r}",
                predict(model_with(f"{field}{value}", {}, {field: value})),
                nothing,
            )
        )
    out.append(
        (
            "model metadata step = '<script>…'",
            predict(model_with("step", {"step": "<script>alert(1)</script>"})),
            nothing,
        )
    )
    out.append(
        (
            "format version 'abc'",
            predict(header_with("version", lambda h: h["__metadata__"].update(version="abc"))),
            nothing,
        )
    )
    out.append(
        (
            "valid safetensors, 90 MB header",
            predict(header_with("big", lambda h: h["__metadata__"].update(pad="<" * 90_000_000))),
            nothing,
        )
    )
    out.append(
        (
            "tensor declared (16, 10⁹)",
            predict(header_with("shape", lambda h: h["fc1.weight"].update(shape=[16, 10**9]))),
            nothing,
        )
    )

    # IDX files: a data root per case, the run's dataset (mnist) inside.
    def data_root(name: str, test_images: bytes | None = None, n_test: int = 30) -> str:
        root = tmp / name
        folder = write_dataset(root / "mnist", n_train=5_010, n_test=n_test)
        if test_images is not None:
            (folder / "t10k-images-idx3-ubyte.gz").write_bytes(test_images)
        return str(root)

    overflow = struct.pack(">HBB", 0, 0x08, 4) + struct.pack(">IIII", *(2**32 - 1,) * 4)
    bomb_header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", 5_000_000, 28, 28)
    bomb = gzip.compress(bomb_header) + gzip.compress(bytes(1 << 20)) * 64  # 64 MiB of zeros
    for name, root in [
        ("IDX dimensions whose product overflows", data_root("overflow", gzip.compress(overflow))),
        ("gzip bomb: 64 KB declaring 5 M images", data_root("bomb", bomb)),
        ("test split of 0 images", data_root("empty", None, n_test=0)),
    ]:
        out.append((name, ["evaluate", str(model), "--data-dir", root, "--device", "cpu"], nothing))

    fifo = tmp / "pipe.png"
    os.mkfifo(fifo)
    out.append(("predict a FIFO", ["predict", str(model), str(fifo)], nothing))
    out.append(("predict /dev/zero", ["predict", str(model), "/dev/zero"], nothing))
    outdir = tmp / "outputs"
    outdir.mkdir()
    empty = lambda: not any(outdir.iterdir())  # noqa: E731
    run_dir = tmp / "run"
    run_dir.mkdir()
    (run_dir / "model.safetensors").write_bytes(good)
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    for command in (["filters", str(model)], ["plot", str(run_dir)]):
        out.append((f"{command[0]} -o a folder", [*command, "-o", str(outdir)], empty))
        out.append((f"{command[0]} -o x.xyz", [*command, "-o", str(outdir / "x.xyz")], empty))
    features = ["features", str(model), "--image", str(png)]
    out.append(("features -o a folder", [*features, "-o", str(outdir)], empty))
    out.append(
        (
            "export --opset 999",
            ["export", str(model), "-o", str(outdir / "m.onnx"), "--opset", "999"],
            empty,
        )
    )
    out.append(("predict --device cpu:abc", predict(str(model), "--device", "cpu:abc"), nothing))
    return out


def report_escaping(tmp: Path) -> Outcome:
    """A ``<script>`` in config.json reaches report.html escaped (the report needs test data)."""
    run_dir = tmp / "report-run"
    run_dir.mkdir()
    tiny_model_file(run_dir / "model.safetensors")
    (run_dir / "config.json").write_text(json.dumps({"note": "<script>alert(1)</script>"}))
    root = tmp / "report-data"
    write_dataset(root / "mnist", n_train=5_010, n_test=30)
    out = tmp / "report.html"
    status, err, seconds = run(
        ["report", str(run_dir), "-o", str(out), "--data-dir", str(root), "--device", "cpu"]
    )
    text = out.read_text() if out.exists() else ""
    ok = status == 0 and "<script>alert" not in text and "&lt;script&gt;alert" in text
    shown = (
        "escaped as &lt;script&gt;"
        if ok
        else f"status {status}; raw script present: {'<script>alert' in text}"
    )
    return Outcome(
        "<script> in config.json → report.html",
        "report",
        status,
        shown + err.strip(),
        seconds,
        ok,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the table for the docs")
    args = parser.parse_args(argv)
    results: list[Outcome] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        all_cases = cases(tmp)
        run(["predict", str(tmp / "model.safetensors"), str(tmp / "digit.png")])  # warm-up: imports
        for name, argv_, nothing_written in all_cases:
            status, err, seconds = run(argv_)
            lines = err.strip().splitlines()
            ok = (
                status not in (0, "traceback", "hang")
                and len(lines) == 1
                and lines[0].startswith("mnist-cnn: error: ")
                and len(lines[0]) < 400
                and nothing_written()
            )
            shown = (
                lines[0]
                if len(lines) == 1
                else f"{len(lines)} lines: {lines[-1][:120] if lines else ''}"
            )
            shown = shown.replace(str(tmp) + "/", "")
            results.append(Outcome(name, argv_[0], status, shown, seconds, ok))
        results.append(report_escaping(tmp))
    if args.markdown:
        print("| case | command | exit | what the user sees | seconds |")
        print("| --- | --- | ---: | --- | ---: |")
        for r in results:
            text = r.stderr.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            case = r.case.replace("<", "&lt;").replace(">", "&gt;")
            print(f"| {case} | `{r.command}` | {r.status} | {text} | {r.seconds:.2f} |")
    else:
        for r in results:
            print(f"{'ok ' if r.ok else 'BAD'} {r.case}: {r.status} ({r.seconds:.2f} s) {r.stderr}")
    bad = [r.case for r in results if not r.ok]
    print(f"{len(results) - len(bad)} of {len(results)} cases keep the promise", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
