"""The run folder's JSON checks one by one: each kind of damage gets its own one-line reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnist_cnn import rundir
from mnist_cnn.errors import CheckpointError
from mnist_cnn.rundir import check_config, check_metrics_record, check_results

GOOD_RESULTS = {
    "step": 10,
    "train_seconds": 1.5,
    "test": {"accuracy": 0.9, "correct": 9, "total": 10},
}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([], "not a JSON object"),
        ({"dataset": {}}, "no 'train' settings"),
        ({"train": {}, "dataset": [1]}, "'dataset' must be an object"),
        ({"train": {}, "dataset": {"val": -5}}, "dataset.val must be a count"),
    ],
)
def test_config_damage_is_named(data: object, words: str) -> None:
    with pytest.raises(CheckpointError, match=words):
        check_config(data, "config.json")


@pytest.mark.parametrize(
    ("rec", "words"),
    [
        ("step 3", "not a JSON object"),
        ({"step": 1.5}, "step must be a whole number"),
        ({"step": 1, "val_accuracy": 1.5}, "val_accuracy must lie in [0, 1]"),
        ({"step": 1, "loss": float("nan")}, "loss must be a finite number"),
        ({"step": 1, "seconds": -1}, "seconds must be a number >= 0"),
    ],
)
def test_metrics_record_damage_is_named(rec: object, words: str) -> None:
    assert words in check_metrics_record(rec)
    assert check_metrics_record({"step": 1, "loss": 0.5, "val_accuracy": 0.9}) == ""


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: [d], "not a JSON object"),
        (lambda d: {**d, "test": None}, "no test result"),
        (lambda d: {**d, "test": {"accuracy": 2}}, "no test accuracy in [0, 1]"),
        (lambda d: {**d, "step": "ten"}, "step must be a whole number"),
        (lambda d: {**d, "train_seconds": -3}, "train_seconds must be a number >= 0"),
        (lambda d: {**d, "test": {"accuracy": 0.5, "total": 1.5}}, "test total must be a count"),
    ],
)
def test_results_damage_is_named(change, words: str) -> None:
    assert check_results(GOOD_RESULTS, "results.json") is GOOD_RESULTS
    with pytest.raises(CheckpointError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_results(change(GOOD_RESULTS), "results.json")


def test_json_files_are_checked_before_they_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    with pytest.raises(CheckpointError, match="not a regular file"):
        rundir._read_json(fifo)
    huge = tmp_path / "huge.json"
    with huge.open("wb") as fh:
        fh.truncate(rundir.MAX_JSON_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(CheckpointError, match="a run's JSON file is a few KiB"):
        rundir._read_json(huge)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff{")
    with pytest.raises(CheckpointError, match="damaged"):
        rundir._read_json(bad)
