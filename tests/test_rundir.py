"""The run folder's life: states, lock, resume and extend, dead ends, full disk, divergence."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mnist_cnn import checkpoint, cli
from mnist_cnn.checkpoint import load_model, save_model
from mnist_cnn.errors import CheckpointError, ConfigError, StorageError
from mnist_cnn.fileio import atomic_path
from mnist_cnn.model import build_model
from mnist_cnn.rundir import RunDir, RunInUse, RunState, run_classes
from mnist_cnn.train import RunFinished, TrainingDiverged, preset_config, resume, train

from .run_util import same_weights, tiny_config, tiny_data, weights

DATA = tiny_data()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Steps of a few hundred multiply-adds: a second thread only spins (and costs CPU time).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Stop(Exception):
    """Stands for a kill at a chosen log step (raised from on_log)."""


def _stop_at(step: int):
    def on_log(rec: dict) -> None:
        if rec["step"] == step:
            raise Stop

    return on_log


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny run, never interrupted."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train(tiny_config(), run, data=DATA, curves=False)
    return run


def test_states_and_resume_from_each_dead_end_match_an_uninterrupted_run(tmp_path, reference):
    run = tmp_path / "run"
    assert RunDir(run).state() is RunState.NEW
    # Stopped before the first checkpoint (step 2): config.json, no checkpoint.
    with pytest.raises(Stop):
        train(tiny_config(), run, data=DATA, on_log=_stop_at(0), curves=False)
    assert RunDir(run).state() is RunState.STARTED
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(), run, data=DATA, curves=False)
    # Resumed, it starts again at step 0 with the same settings; stopped after checkpoint 2.
    with pytest.raises(Stop):
        resume(run, data=DATA, on_log=_stop_at(4), curves=False)
    assert RunDir(run).state() is RunState.CHECKPOINTED
    assert [r["step"] for r in _records(run)] == [0, 2, 4]  # 4 was logged, not checkpointed
    assert json.loads(load_file_meta(run / "checkpoint.safetensors"))["step"] == 2
    # A killed writer's temp files go at the next start; files not of ours stay.
    # ".tmpnUEqIe" is safetensors' own temp name (its save_file writes one and renames it): the
    # kill test found one left behind by a kill inside save_file.
    stale = [run / ".checkpoint.k2j4h1.tmp.safetensors", run / ".config.x_9.tmp.json"]
    stale.append(run / ".tmpnUEqIe")
    for p in stale:
        p.write_bytes(b"half")
    (run / "notes.tmp").write_text("not ours")
    assert RunDir(run).state() is RunState.CHECKPOINTED  # temp files do not change the state
    result = resume(run, data=DATA, curves=False)
    assert not any(p.exists() for p in stale) and (run / "notes.tmp").exists()
    assert RunDir(run).state() is RunState.FINISHED
    assert result.steps == 6
    assert same_weights(weights(run), weights(reference))  # fp32 on the CPU: bit for bit
    # Records add up: the same steps, the same losses and accuracies as the uninterrupted run.
    assert _without_seconds(_records(run)) == _without_seconds(_records(reference))
    seconds = [r["seconds"] for r in _records(run)]
    assert seconds == sorted(seconds)
    results = json.loads((run / "results.json").read_text())
    assert results["train_seconds"] >= seconds[-1] > 0
    assert result.seconds == results["train_seconds"]


def test_time_carries_over_a_resume(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(tiny_config(), run, data=DATA, on_log=_stop_at(4), curves=False)
    meta = json.loads(load_file_meta(run / "checkpoint.safetensors"))
    # Pretend the first two steps took a minute: the resumed run must count that minute.
    meta["seconds"] = 60.0
    _rewrite_meta(run / "checkpoint.safetensors", meta)
    result = resume(run, data=DATA, curves=False)
    assert 60.0 < result.seconds < 600
    assert all(r["seconds"] > 60 for r in _records(run) if r["step"] > 2)


def load_file_meta(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return fh.metadata()["meta"]


def _rewrite_meta(path: Path, meta: dict, tensors: dict | None = None) -> None:
    tensors = load_file(str(path)) if tensors is None else tensors
    checkpoint._write(path, tensors, meta)


def test_resume_of_a_finished_run_changes_nothing_and_says_how_to_extend(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = _snapshot(run)
    with pytest.raises(RunFinished, match=r"finished .*--steps N, with N > 6"):
        resume(run, data=DATA, curves=False)
    with pytest.raises(RunFinished):
        resume(run, steps=4, data=DATA, curves=False)
    assert _snapshot(run) == before


def test_steps_extends_a_finished_run_like_a_longer_run(tmp_path, reference):
    longer = train(tiny_config(steps=10), tmp_path / "longer", data=DATA, curves=False)
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = json.loads((run / "results.json").read_text())["train_seconds"]
    result = resume(run, steps=10, data=DATA, curves=False)
    assert result.steps == 10 and result.seconds > before
    assert same_weights(weights(run), weights(longer.run_dir))
    assert [r["step"] for r in _records(run)] == [0, 2, 4, 6, 8, 10]
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 10
    assert RunDir(run).state() is RunState.FINISHED


def test_steps_cannot_replan_a_onecycle_run(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(tiny_config(schedule="onecycle"), run, data=DATA, on_log=_stop_at(0), curves=False)
    with pytest.raises(ConfigError, match="onecycle"):
        resume(run, steps=8, data=DATA, curves=False)


def test_cli_resume_refuses_any_other_flag_naming_it(tmp_path, capsys, reference):
    for flag in (["--lr", "5"], ["--seed", "2"], ["--plain-step"], ["--preset", "seed"]):
        assert cli.main(["train", "--resume", str(reference), *flag]) == 1
        err = capsys.readouterr().err
        assert f"{flag[0]} cannot be used with --resume" in err and err.count("\n") == 1
    assert cli.main(["train", "--resume", str(reference)]) == 1
    err = capsys.readouterr().err
    assert "is finished" in err and "--steps N" in err and err.count("\n") == 1


def test_resume_finds_moved_data_with_data_dir(tmp_path, reference):
    from mnist_cnn.datasets import load_dataset

    from .idx_util import write_dataset

    write_dataset(tmp_path / "a" / "mnist", n_train=5_064, n_test=16)
    data = load_dataset("mnist", tmp_path / "a", download=False)
    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(tiny_config(data_dir=str(tmp_path / "a")), run, data=data, on_log=_stop_at(4))
    (tmp_path / "a").rename(tmp_path / "b")
    with pytest.raises(Stop):  # it trains on: from the checkpoint of step 2 to step 6
        resume(
            run,
            steps=8,
            data_dir=tmp_path / "b",
            on_log=_stop_at(6),
        )
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["data_dir"] == str(tmp_path / "b")
    # Other data of other sizes are refused: "is --data-dir the same data?"
    write_dataset(tmp_path / "c" / "mnist", n_train=5_080, n_test=16)
    with pytest.raises(ConfigError, match="same data"):
        resume(run, steps=10, data_dir=tmp_path / "c")
    # A run of these very files made when small files held out 5,000 images (64 left to train
    # on) is told so, not asked whether the data are the same.
    config = json.loads((run / "config.json").read_text())
    config["dataset"].update(train=64, val=5_000)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="held out 5,000 of its 5,064 .* start a new run"):
        resume(run, steps=10, data_dir=tmp_path / "b")


@pytest.mark.parametrize("files", [["model.safetensors"], ["metrics.jsonl", "results.json"], ["x"]])
def test_out_over_files_that_are_not_a_run_is_refused_untouched(tmp_path, files):
    run = tmp_path / "run"
    run.mkdir()
    for name in files:
        (run / name).write_text("mine")
    with pytest.raises(ConfigError, match="not a run of mnist-cnn"):
        train(tiny_config(), run, data=DATA, curves=False)
    assert sorted(p.name for p in run.iterdir()) == sorted(files)  # not even a lock file
    assert all((run / n).read_text() == "mine" for n in files)


def test_a_second_training_in_the_same_folder_is_refused(tmp_path, reference):
    run = tmp_path / "run"
    busy = pytest.raises(RunInUse, match=r"in use by another training \(process \d+\)")
    with RunDir(run).lock(), busy:
        train(tiny_config(), run, data=DATA, curves=False)
    shutil.copytree(reference, tmp_path / "done")
    with RunDir(tmp_path / "done").lock(), pytest.raises(RunInUse):
        resume(tmp_path / "done", steps=8, data=DATA, curves=False)
    with pytest.raises(Stop):  # released: the folder is usable again
        train(tiny_config(), run, data=DATA, on_log=_stop_at(0), curves=False)


def test_seeds_are_bounded_to_what_the_generators_take(tmp_path):
    for seed in (-5, 2**32, 9_300_000_000_000, 2**70):
        with pytest.raises(ConfigError, match="seed must lie in"):
            preset_config("seed", seed=seed)
    # The largest seed trains, shifts included (a second generator of seed * 1_000_003 + ...).
    config = tiny_config(seed=2**32 - 1, shift=1)
    with pytest.raises(Stop):
        train(config, tmp_path / "run", data=DATA, on_log=_stop_at(2), curves=False)
    assert RunDir(tmp_path / "run").state() is RunState.STARTED


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", None), ("seed", "x"), ("seed", 2**70), ("seed", -5), ("data_dir", 5), ("lr", "fast")],
)
def test_a_damaged_config_json_is_refused_naming_the_file(tmp_path, reference, field, value):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "results.json").unlink()  # not finished, so resume reads on
    path = run / "config.json"
    config = json.loads(path.read_text())
    config["train"][field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json"):
        resume(run, data=DATA, curves=False)


def test_a_diverging_run_stops_keeping_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    config = tiny_config(lr=1e30, steps=10, log_every=1, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="checkpoint of step 1 is kept") as err:
        train(config, run, data=DATA, curves=False)
    assert "\n" not in str(err.value)
    assert load_model(run)[1]["step"] == 1  # the kept model loads: its weights are finite
    assert not (run / "results.json").exists()
    assert all(r["loss"] is None or r["loss"] < 1e30 for r in _records(run))


def test_models_with_non_finite_weights_are_refused(tmp_path):
    from mnist_cnn.serve import create_app

    model = build_model(tiny_config().model)
    with torch.no_grad():
        model.fc2.weight[3, 4] = float("nan")
    save_model(tmp_path / "m.safetensors", model)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_model(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        create_app(tmp_path / "m.safetensors")
    assert cli.main(["evaluate", str(tmp_path / "m.safetensors"), "--device", "cpu"]) == 1


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    real_save = checkpoint.save_file
    calls = []

    def full_disk(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) <= 2:  # the checkpoint and model of step 2 are written
            return real_save(tensors, path, metadata=metadata)
        Path(path).write_bytes(b"\0" * 1000)  # part of the file, then the disk is full
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    run = tmp_path / "run"
    with pytest.raises(StorageError) as err:
        train(tiny_config(), run, data=DATA, curves=False)
    assert str(err.value) == f"no space left on device writing {run / 'checkpoint.safetensors'}"
    assert json.loads(load_file_meta(run / "checkpoint.safetensors"))["step"] == 2
    assert not [p for p in run.iterdir() if ".tmp" in p.name]  # the partial file is gone
    assert RunDir(run).state() is RunState.CHECKPOINTED  # resumable


def test_a_full_disk_writing_json_is_one_line_and_leaves_no_temp_file(tmp_path):
    full = pytest.raises(StorageError, match="no space left on device writing")
    with full, atomic_path(tmp_path / "config.json") as tmp:
        tmp.write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_write_where_no_file_can_be_made_says_where_and_why(tmp_path):
    """The temp file cannot even be made (the folder is a file): one line naming the path and
    the system's reason, no traceback's worth of text."""
    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a folder")
    target = blocker / "run" / "config.json"
    with pytest.raises(StorageError) as err, atomic_path(target):
        pass
    assert str(err.value) == f"cannot write {target}: Not a directory"
    assert blocker.read_text() == "a file, not a folder"


def test_metrics_garbage_lines_are_skipped_naming_the_line(tmp_path, reference, caplog):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    good = (run / "metrics.jsonl").read_bytes()
    garbage = b'42\n[1,2]\n{}\n{"step": "abc", "seconds": 1}\n\xff\xfe\n{"step": 1, "loss'
    (run / "metrics.jsonl").write_bytes(good + garbage)
    with caplog.at_level(logging.WARNING):
        records = RunDir(run).read_metrics()
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    assert "skipped line(s) 5, 6, 7, 8, 9 (line 5: not a JSON object)" in caplog.text


def test_results_json_with_a_wrong_type_is_refused_naming_it(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    results = json.loads((run / "results.json").read_text())
    results["test"]["accuracy"] = "high"
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(CheckpointError, match=r"results\.json: no test accuracy in \[0, 1\]"):
        RunDir(run).read_results()
    assert cli.main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 1


def test_a_bare_model_file_knows_its_dataset_and_classes(tmp_path):
    fashion = tiny_data("fashion-mnist")
    config = tiny_config(dataset="fashion-mnist", checkpoint_every=1)
    with pytest.raises(Stop):  # model.safetensors is written with each checkpoint
        train(config, tmp_path / "run", data=fashion, on_log=_stop_at(2), curves=False)
    bare = tmp_path / "elsewhere" / "model.safetensors"
    bare.parent.mkdir()
    shutil.copy(tmp_path / "run" / "model.safetensors", bare)
    _, meta = load_model(bare)
    assert run_classes(bare, meta) == ("fashion-mnist", fashion.classes)
