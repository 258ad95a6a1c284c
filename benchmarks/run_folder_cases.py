"""Hostile and unlucky run folders, case by case: what the user is told.

    .venv/bin/python benchmarks/run_folder_cases.py [--markdown]

Each case is built in a temp folder from a tiny network trained for six steps on random images
(fp32, one thread: seconds in all). Exit status 1 if a case ends in anything but the project's
own one-line error (or, where that is the promise, in success).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from mnist_cnn import checkpoint
from mnist_cnn.datasets import DATASETS, MNISTLike, Split
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.model import ModelConfig
from mnist_cnn.rundir import RunDir
from mnist_cnn.train import TrainConfig, preset_config, resume, train


def tiny_data(n_train: int = 64, n_eval: int = 16) -> MNISTLike:
    gen = torch.Generator().manual_seed(0)

    def split(name: str, n: int) -> Split:
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        return Split(name, images, torch.randint(0, 10, (n,), generator=gen))

    return MNISTLike(
        "mnist", DATASETS["mnist"].classes, split("train", n_train), split("val", n_eval),
        split("test", n_eval),
    )  # fmt: skip


CONFIG = TrainConfig(
    steps=6, batch_size=8, lr=1e-3, seed=1, device="cpu", log_every=2, checkpoint_every=2,
    eval_batch_size=16, precision="fp32",
    model=ModelConfig(conv1_channels=2, conv2_channels=4, kernel_size=3, hidden=8),
)  # fmt: skip
DATA = tiny_data()


def _copy(ref: Path, root: Path, name: str, *, finished: bool = False) -> Path:
    run = root / name
    shutil.copytree(ref, run)
    if not finished:
        (run / "results.json").unlink()  # a checkpointed run, not a finished one
    return run


def _edit_config(run: Path, field: str, value: object) -> Path:
    config = json.loads((run / "config.json").read_text())
    config["train"][field] = value
    (run / "config.json").write_text(json.dumps(config))
    return run


def _edit_checkpoint(run: Path, change: Callable[[dict, dict], None]) -> Path:
    path = run / "checkpoint.safetensors"
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["meta"])
    change(tensors, meta)
    checkpoint._write(path, tensors, meta)
    return run


CHECKPOINT_EDITS = [
    ("step missing", lambda t, m: m.pop("step")),
    ("step = 'abc'", lambda t, m: m.update(step="abc")),
    ("step = -100", lambda t, m: m.update(step=-100)),
    ("lr = 'fast'", lambda t, m: m["optimizer"]["param_groups"][0].update(lr="fast")),
    (
        "lr = 9.2e37 (finite, above the run's)",
        lambda t, m: m["optimizer"]["param_groups"][0].update(lr=9.2e37),
    ),
    ("Adam state of the wrong shape", lambda t, m: t.update({"optim.0.exp_avg": torch.zeros(3)})),
    ("RNG state missing", lambda t, m: t.pop("rng.torch")),
]


def _damaged(ref: Path, root: Path, i: int, change: Callable[[dict, dict], None]) -> Path:
    return _edit_checkpoint(_copy(ref, root, f"c{i}"), change)


def _full_disk_at_second_checkpoint(run: Path) -> None:
    real, calls = checkpoint.save_file, []

    def save(tensors, path, metadata=None):  # the Rust writer's own error for ENOSPC
        calls.append(path)
        if len(calls) > 2:
            raise SafetensorError('IoError(Os { code: 28, kind: StorageFull, message: "" })')
        real(tensors, path, metadata=metadata)

    checkpoint.save_file = save
    try:
        train(CONFIG, run, data=DATA)
    finally:
        checkpoint.save_file = real


def _second_training(run: Path) -> None:
    with RunDir(run).lock():
        train(CONFIG, run, data=DATA)


def cases(ref: Path, root: Path) -> list[tuple[str, Callable[[], object]]]:
    r = root

    def foreign() -> Path:
        (r / "foreign").mkdir()
        (r / "foreign" / "model.safetensors").write_text("someone's file")
        return r / "foreign"

    return [
        ("--resume a finished run", lambda: resume(_copy(ref, r, "f", finished=True), data=DATA)),
        (
            "--resume --steps 10 (finished, 6 steps)",
            lambda: resume(_copy(ref, r, "x", finished=True), steps=10, data=DATA).steps,
        ),
        ("--out over a folder holding a model file", lambda: train(CONFIG, foreign(), data=DATA)),
        ("a second training in a locked folder", lambda: _second_training(r / "locked")),
        ("--seed 9300000000000", lambda: preset_config("seed", seed=9_300_000_000_000)),
        ("--lr inf", lambda: preset_config("seed", lr=float("inf"))),
        (
            "--lr 1e30 (trains to NaN)",
            lambda: train(
                dataclasses.replace(CONFIG, lr=1e30, log_every=1, checkpoint_every=1),
                r / "nan",
                data=DATA,
            ),
        ),
        ("disk full at the 2nd checkpoint", lambda: _full_disk_at_second_checkpoint(r / "full")),
        *[
            (
                f"config.json seed = {v!r}",
                lambda v=v, i=i: resume(_edit_config(_copy(ref, r, f"s{i}"), "seed", v), data=DATA),
            )
            for i, v in enumerate([None, "x", 2**70, -5])
        ],
        (
            "config.json data_dir = 5",
            lambda: resume(_edit_config(_copy(ref, r, "dd"), "data_dir", 5), data=DATA),
        ),
        (
            "results.json accuracy = 'high'",
            lambda: RunDir(_edit_results(_copy(ref, r, "hi", finished=True))).read_results(),
        ),
        (
            "metrics.jsonl with lines 42, [1,2], {}, step 'abc', bytes 0xff",
            lambda: f"{len(RunDir(_garbage_metrics(_copy(ref, r, 'm'))).read_metrics())} "
            "records read; a warning names the skipped lines",
        ),
        *[
            (f"checkpoint {label}", lambda c=c, i=i: resume(_damaged(ref, r, i, c), data=DATA))
            for i, (label, c) in enumerate(CHECKPOINT_EDITS)
        ],
    ]  # fmt: skip


def _edit_results(run: Path) -> Path:
    results = json.loads((run / "results.json").read_text())
    results["test"]["accuracy"] = "high"
    (run / "results.json").write_text(json.dumps(results))
    return run


def _garbage_metrics(run: Path) -> Path:
    with open(run / "metrics.jsonl", "ab") as fh:
        fh.write(b'42\n[1,2]\n{}\n{"step": "abc", "seconds": 1}\n\xff\xfe\n')
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    if os.environ.get("MNIST_CNN_DRY_RUN"):  # the docs test: start-up and arguments only
        print(f"would run the run-folder cases (markdown: {args.markdown})")
        return 0
    torch.set_num_threads(1)
    broken = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref = root / "RUN"
        train(CONFIG, ref, data=DATA)
        rows = []
        for label, case in cases(ref, root):
            t0 = time.perf_counter()
            try:
                value = case()
                outcome = "ok" + (f": {value}" if value is not None else "")
            except MnistCnnError as err:
                outcome = f"mnist-cnn: error: {err}".replace(f"{root}/", "")
            except Exception as err:  # a broken promise: say so, go on
                outcome = f"BROKEN: {type(err).__name__}: {err}"
                broken += 1
            rows.append((label, outcome, time.perf_counter() - t0))
    if args.markdown:
        print("| case | what the user sees | seconds |\n| --- | --- | ---: |")
        for label, outcome, secs in rows:
            text = outcome.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            print(f"| {label} | {text} | {secs:.2f} |")
    else:
        for label, outcome, secs in rows:
            print(f"{label}: {outcome} ({secs:.2f} s)")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
