"""The run folder: its files, its lock and its state, and the one place they are read.

A run folder holds
- ``config.json``: every setting of the run, the dataset's split sizes and the provenance;
- ``metrics.jsonl``: one JSON record per log step (step, loss, accuracies, seconds);
- ``checkpoint.safetensors`` and ``model.safetensors``: the training state and the weights
  (file formats in checkpoint.py);
- ``results.json``: the test result, written when training ends;
- ``curves.png``, ``README.md`` (the model card) and optionally ``tensorboard/``;
- ``.lock``: held (``flock``) by the one training process that writes the folder.

Its state follows from which files exist: new (nothing of ours), started (config, no
checkpoint yet), checkpointed (a checkpoint, no final result), finished (results.json for the
configured number of steps). Everything read from these files is checked for type and range;
a file that fails says so in one line that names it (and the line, for metrics.jsonl).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINT_FILE
from .errors import CheckpointError, ConfigError, MnistCnnError
from .fileio import atomic_write_bytes, atomic_write_json, storage_error

try:  # POSIX; elsewhere a run folder is not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"
CARD_FILE = "README.md"  # the model card (card.py)
# fileio.atomic_path's temp names: ".<stem>.<random>.tmp<suffix>" beside the file they replace;
# and safetensors' own (".tmp" and 6 random characters): its save_file writes a temp file in the
# same folder and renames it, so a kill inside save_file leaves one of those.
_TEMP_NAME = re.compile(
    r"^\.(config|metrics|results|checkpoint|model|curves|README)\.[A-Za-z0-9_]+\.tmp"
    r"\.(json|jsonl|safetensors|png|md)$"
    r"|^\.tmp[A-Za-z0-9]{6}$"
)
# A config.json or results.json is a few KiB; metrics.jsonl ~100 bytes a record.
MAX_JSON_BYTES = 1 << 20
MAX_METRICS_BYTES = 256 << 20
MAX_SEED = 2**32 - 1  # what every generator of the run takes, with room for seed * 1_000_003


class RunState(enum.Enum):
    NEW = "new"  # nothing of a run yet
    FOREIGN = "foreign"  # files, but no config.json: not a run of this program
    STARTED = "started"  # config.json, no checkpoint yet
    CHECKPOINTED = "checkpointed"  # a checkpoint; no result for the configured steps
    FINISHED = "finished"  # results.json for the configured number of steps


class RunInUse(ConfigError):
    """Another training process holds the run folder's lock."""


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: errors quote files, never echo them whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object, low: int = 0, high: int = 2**53) -> bool:
    return type(value) is int and low <= value <= high


def _is_number(value: object, low: float = -math.inf, high: float = math.inf) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and low <= value <= high


def _read_json(path: Path) -> Any:
    """A JSON file of ours, size-checked before it is read; one-line errors naming it."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise CheckpointError(f"{path}: not a regular file")
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: {size:,} bytes; a run's JSON file is a few KiB")
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, nested too deep
        raise CheckpointError(f"{path}: damaged ({short(str(err), 100)})") from None


def check_config(data: Any, path: Path | str) -> dict[str, Any]:
    """config.json's structure: the ``train`` settings are checked by TrainConfig itself."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    if not isinstance(data.get("train"), dict):
        raise CheckpointError(f"{path}: no 'train' settings; is it a config.json of mnist-cnn?")
    dataset = data.get("dataset")
    if dataset is not None:
        if not isinstance(dataset, dict):
            raise CheckpointError(f"{path}: 'dataset' must be an object, got {short(dataset)}")
        for key in ("train", "val", "test"):
            if key in dataset and not _is_int(dataset[key]):
                raise CheckpointError(
                    f"{path}: dataset.{key} must be a count of images, got {short(dataset[key])}"
                )
    return data


def check_metrics_record(rec: Any) -> str:
    """Why ``rec`` is not a metrics record ('' if it is one)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if not _is_int(rec.get("step")):
        return f"step must be a whole number >= 0, got {short(rec.get('step'))}"
    for key in ("train_accuracy", "val_accuracy"):
        if key in rec and rec[key] is not None and not _is_number(rec[key], 0, 1):
            return f"{key} must lie in [0, 1], got {short(rec[key])}"
    if rec.get("loss") is not None and not _is_number(rec["loss"]):
        return f"loss must be a finite number, got {short(rec['loss'])}"
    if "seconds" in rec and not _is_number(rec["seconds"], 0):
        return f"seconds must be a number >= 0, got {short(rec['seconds'])}"
    return ""


def check_results(data: Any, path: Path | str) -> dict[str, Any]:
    """results.json: the step reached, the training time and the test result."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    test = data.get("test")
    if not isinstance(test, dict):
        raise CheckpointError(f"{path}: no test result")
    if not _is_number(test.get("accuracy"), 0, 1):
        raise CheckpointError(
            f"{path}: no test accuracy in [0, 1] (found {short(test.get('accuracy'))})"
        )
    if not _is_int(data.get("step")):
        raise CheckpointError(f"{path}: step must be a whole number, got {short(data.get('step'))}")
    if "train_seconds" in data and not _is_number(data["train_seconds"], 0):
        raise CheckpointError(
            f"{path}: train_seconds must be a number >= 0, got {short(data.get('train_seconds'))}"
        )
    for key in ("correct", "total"):
        if key in test and not _is_int(test[key]):
            raise CheckpointError(f"{path}: test {key} must be a count, got {short(test[key])}")
    return data


class RunDir:
    """One run folder: the only code that knows its files."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, run: str | os.PathLike[str]) -> RunDir:
        """The run folder of RUN: the folder itself, or the folder holding a weights file."""
        path = Path(run)
        return cls(path if path.is_dir() else path.parent)

    def __str__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ state

    def _names(self) -> set[str]:
        try:
            names = {p.name for p in self.path.iterdir()}
        except NotADirectoryError:
            raise ConfigError(f"{self.path}: exists and is not a folder") from None
        except FileNotFoundError:
            return set()
        except OSError as err:
            raise CheckpointError(f"{self.path}: cannot read ({err.strerror})") from None
        return {n for n in names if n != LOCK_FILE and not _TEMP_NAME.match(n)}

    def state(self) -> RunState:
        """Which stage of its life the folder is at (from the files present)."""
        names = self._names()
        if not names:
            return RunState.NEW
        if CONFIG_FILE not in names:
            return RunState.FOREIGN
        if CHECKPOINT_FILE not in names:
            return RunState.STARTED
        results = self.read_results()
        steps = self.read_config()["train"].get("steps")
        if results is not None and (not _is_int(steps) or results["step"] >= steps):
            return RunState.FINISHED
        return RunState.CHECKPOINTED

    def foreign_message(self) -> str:
        names = sorted(self._names())
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        return (
            f"{self.path} holds files that are not a run of mnist-cnn ({shown}); "
            "choose an empty or new folder with --out"
        )

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temp files a killed writer left behind (call only while holding the lock)."""
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for p in self.path.iterdir():
                if _TEMP_NAME.match(p.name) and p.is_file():
                    p.unlink(missing_ok=True)
                    removed.append(p)
        if removed:
            log.info("%s: removed %d stale temp file(s)", self.path, len(removed))
        return removed

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's exclusive lock (created with the folder) for a training's life."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fh = open(self.file(LOCK_FILE), "a+")  # noqa: SIM115 - held for the whole block
        except FileExistsError:
            raise ConfigError(f"{self.path}: exists and is not a folder") from None
        except OSError as err:
            raise storage_error(self.path, err) from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    fh.seek(0)
                    holder = fh.read(32).strip()
                    who = f" (process {holder})" if holder.isdigit() else ""
                    raise RunInUse(
                        f"{self.path} is in use by another training{who}; wait for it to end "
                        "or choose another --out"
                    ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield
        finally:
            fh.close()  # closing releases the lock

    # ------------------------------------------------------------------ config.json

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.file(CONFIG_FILE), config)

    def read_config(self) -> dict[str, Any]:
        """config.json, its structure checked (the settings are checked by TrainConfig)."""
        path = self.file(CONFIG_FILE)
        try:
            return check_config(_read_json(path), path)
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no {CONFIG_FILE}; is it a run folder?") from None

    def dataset_name(self) -> str | None:
        """The dataset named in config.json (None without a readable one)."""
        try:
            name = self.read_config()["train"].get("dataset")
        except MnistCnnError:
            return None
        return name if isinstance(name, str) else None

    # ------------------------------------------------------------------ metrics.jsonl

    def reset_metrics(self, through_step: int) -> None:
        """Keep the records up to ``through_step`` (logged before its checkpoint); drop the rest.

        Records after the checkpoint are logged again as the run replays those steps. Lines that
        are not records (a line torn by a kill) are dropped too.
        """
        path = self.file(METRICS_FILE)
        if through_step < 0:
            path.unlink(missing_ok=True)
            return
        kept = [r for r in self.read_metrics(missing_ok=True) if r["step"] <= through_step]
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def append_metrics(self, record: dict[str, Any]) -> None:
        path = self.file(METRICS_FILE)
        try:
            with open(path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as err:
            raise storage_error(path, err) from None

    def read_metrics(self, *, missing_ok: bool = False) -> list[dict[str, Any]]:
        """The records of metrics.jsonl; lines that are not records are skipped with a warning
        naming their line number (the last line of a live run may be half written)."""
        path = self.file(METRICS_FILE)
        try:
            size = path.stat().st_size
            if size > MAX_METRICS_BYTES:
                raise CheckpointError(f"{path}: {size:,} bytes; too large for a metrics log")
            raw = path.read_bytes()
        except FileNotFoundError:
            if missing_ok:
                return []
            raise CheckpointError(f"{self.path}: no {METRICS_FILE}; is it a run folder?") from None
        except OSError as err:
            raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
        records, bad = [], []
        lines = raw.splitlines()
        if lines and not raw.endswith(b"\n"):
            lines.pop()  # a record being written right now (or torn by a kill): not yet one
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                problem = check_metrics_record(rec)
            except (ValueError, RecursionError):
                problem = "not JSON"
            if problem:
                bad.append((number, problem))
            else:
                records.append(rec)
        if bad:
            lines = ", ".join(str(n) for n, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
            log.warning("%s: skipped line(s) %s (line %d: %s)", path, lines, *bad[0])
        return records

    # ------------------------------------------------------------------ results.json

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write_json(self.file(RESULTS_FILE), results)

    def read_results(self) -> dict[str, Any] | None:
        """results.json, checked; None if the run has not finished."""
        path = self.file(RESULTS_FILE)
        try:
            return check_results(_read_json(path), path)
        except FileNotFoundError:
            return None

    def remove_results(self) -> None:
        self.file(RESULTS_FILE).unlink(missing_ok=True)


# ---------------------------------------------------------------------- readers of a run


def run_dataset_name(run: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> str:
    """The dataset a model was trained on: from its file's metadata, else its run's
    config.json, else ``mnist`` (files written before the metadata recorded it)."""
    if meta is not None and isinstance(meta.get("dataset"), str):
        return meta["dataset"]
    return RunDir.of(run).dataset_name() or "mnist"


def run_classes(
    run: str | os.PathLike[str], meta: dict[str, Any] | None = None
) -> tuple[str, tuple[str, ...]]:
    """(dataset name, class names) of a model: its metadata first, else its dataset's names."""
    from .datasets import dataset_info

    name = run_dataset_name(run, meta)
    classes = meta.get("classes") if meta is not None else None
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        return name, tuple(classes)
    try:
        return name, dataset_info(name).classes
    except MnistCnnError:
        raise CheckpointError(f"{run}: trained on an unknown dataset {short(name)}") from None


def run_test_accuracy(run: str | os.PathLike[str]) -> float | None:
    """The test accuracy recorded when the run of RUN finished (None if it has not)."""
    results = RunDir.of(run).read_results()
    return None if results is None else float(results["test"]["accuracy"])
