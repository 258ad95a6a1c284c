"""Hostile run folders: real config.json, metrics.jsonl, results.json and checkpoint files,
truncated, bit-flipped or with a field changed. Every outcome is a result or one of the
project's own errors, never another exception."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

from mnist_cnn import checkpoint
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.inspect import run_curves_title
from mnist_cnn.model import build_model, loss_fn
from mnist_cnn.rundir import RunDir, run_classes, run_test_accuracy
from mnist_cnn.step import make_optimizer, prepare_model
from mnist_cnn.train import _resume_config, plan_for, restore, train

from .run_util import tiny_config, tiny_data

FUZZ = settings(
    max_examples=40,
    deadline=10_000,  # ms; one example takes milliseconds, the margin is for a busy machine
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values a hostile or damaged file may hold where a setting is expected.
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished run and one stopped after its checkpoint of step 2 (metrics to step 4)."""
    data = tiny_data()
    root = tmp_path_factory.mktemp("fuzz")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tiny_config(), root / "finished", data=data, curves=False)

        def stop(rec: dict) -> None:
            if rec["step"] == 4:
                raise KeyboardInterrupt  # stands for a kill

        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(), root / "stopped", data=data, on_log=stop, curves=False)
    finally:
        torch.set_num_threads(threads)
    return {"finished": root / "finished", "stopped": root / "stopped"}


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON document (objects and lists)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    obj[path[0]] = _set(obj[path[0]], path[1:], value)
    return obj


def _delete(obj: Any, path: tuple) -> None:
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]


@st.composite
def damaged(draw: st.DrawFn, raw: bytes, edit: Callable[[st.DrawFn], bytes]) -> bytes:
    """``raw`` truncated, with bits flipped, or with a field changed by ``edit``."""
    kind = draw(st.sampled_from(["truncate", "flip", "edit", "edit"]))
    if kind == "truncate":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == "flip":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    return edit(draw)


def _json_edit(doc: Any, lines: bool = False) -> Callable[[st.DrawFn], bytes]:
    """A field of ``doc`` (a list of records when ``lines``) set to junk or deleted."""

    def edit(draw: st.DrawFn) -> bytes:
        new = json.loads(json.dumps(doc))
        path = draw(st.sampled_from(_paths(new)))
        if draw(st.booleans()) and path:
            _delete(new, path)
        else:
            new = _set(new, path, draw(JUNK))
        if lines:
            if not isinstance(new, list):
                return json.dumps(new).encode() + b"\n"
            return b"".join(json.dumps(r).encode() + b"\n" for r in new)
        return json.dumps(new).encode()

    return edit


def _read_everything(run: Path) -> None:
    """What plot, report, serve, evaluate and --resume read from a run folder."""
    folder = RunDir(run)
    for read in (
        folder.state,
        folder.read_config,
        folder.read_results,
        lambda: run_test_accuracy(run / "model.safetensors"),
        lambda: run_classes(run, None),
        lambda: run_curves_title(run, folder.read_metrics()),
        lambda: _resume_config(folder, None, None),
        lambda: _resume_config(folder, 10, "/elsewhere"),
    ):
        with contextlib.suppress(MnistCnnError):
            read()


def _fuzz_file(runs: dict[str, Path], name: str, data: st.DataObject, lines: bool = False) -> None:
    source = runs["finished"] / name
    raw = source.read_bytes()
    doc = [json.loads(x) for x in raw.splitlines()] if lines else json.loads(raw)
    bad = data.draw(damaged(raw, _json_edit(doc, lines)))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(runs["finished"], run, ignore=shutil.ignore_patterns("*.safetensors"))
        (run / name).write_bytes(bad)
        _read_everything(run)


@FUZZ
@given(data=st.data())
def test_damaged_config_json(runs, data):
    _fuzz_file(runs, "config.json", data)


@FUZZ
@given(data=st.data())
def test_damaged_metrics_jsonl(runs, data):
    _fuzz_file(runs, "metrics.jsonl", data, lines=True)


@FUZZ
@given(data=st.data())
def test_damaged_results_json(runs, data):
    _fuzz_file(runs, "results.json", data)


def _checkpoint_edit(path: Path) -> Callable[[st.DrawFn], bytes]:
    """A field of the checkpoint's metadata set to junk, or a tensor reshaped, retyped or gone."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["meta"])

    def edit(draw: st.DrawFn) -> bytes:
        new_meta, new_tensors = json.loads(json.dumps(meta)), dict(tensors)
        if draw(st.booleans()):
            key = draw(st.sampled_from(sorted(new_tensors)))
            how = draw(st.sampled_from(["drop", "shape", "dtype", "nan"]))
            t = new_tensors.pop(key)
            if how == "shape":
                new_tensors[key] = torch.zeros(draw(st.integers(0, 4)), 3)
            elif how == "dtype":
                new_tensors[key] = t.to(torch.int32 if t.is_floating_point() else torch.float32)
            elif how == "nan" and t.is_floating_point() and t.numel():
                new_tensors[key] = t.clone()
                new_tensors[key].view(-1)[0] = float("nan")
        else:
            p = draw(st.sampled_from(_paths(new_meta)))
            if draw(st.booleans()):
                _delete(new_meta, p)
            else:
                new_meta = _set(new_meta, p, draw(JUNK))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "c.safetensors"
            checkpoint._write(out, new_tensors, new_meta)
            return out.read_bytes()

    return edit


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_damaged_checkpoint_resumes_or_says_why(runs, data):
    source = runs["stopped"] / "checkpoint.safetensors"
    bad = data.draw(damaged(source.read_bytes(), _checkpoint_edit(source)))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(runs["stopped"], run)
        (run / "checkpoint.safetensors").write_bytes(bad)
        folder = RunDir(run)
        try:
            _, config = _resume_config(folder, None, None)
            plan = plan_for(config, torch.device("cpu"))
            model = prepare_model(build_model(config.model), plan)
            optimizer = make_optimizer(model.parameters(), config.lr, plan)
            start = restore(folder, model, optimizer, config)
        except MnistCnnError:
            return
        # Accepted: then everything it restored is usable, for a step of training too.
        assert 0 <= start.step <= config.steps
        loss_fn(model(torch.rand(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
        optimizer.step()
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@contextlib.contextmanager
def _edited_copy(runs, edit: Callable[[dict, dict], None]):
    """The stopped run, copied, its checkpoint's tensors and metadata changed by
    ``edit(tensors, meta)``; yields ``restore()`` for it and the fresh model and optimizer."""
    source = runs["stopped"] / "checkpoint.safetensors"
    tensors = load_file(str(source))
    with safe_open(str(source), "pt") as fh:
        meta = json.loads(fh.metadata()["meta"])
    edit(tensors, meta)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(runs["stopped"], run)
        checkpoint._write(run / "checkpoint.safetensors", tensors, meta)
        folder = RunDir(run)
        _, config = _resume_config(folder, None, None)
        plan = plan_for(config, torch.device("cpu"))
        model = prepare_model(build_model(config.model), plan)
        optimizer = make_optimizer(model.parameters(), config.lr, plan)
        yield (lambda: restore(folder, model, optimizer, config)), model, optimizer


def _set_meta(path: tuple, value: Any):
    def edit(tensors: dict, meta: dict) -> None:
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _group(key: str, value: Any):
    return _set_meta(("optimizer", "param_groups", 0, key), value)


@pytest.mark.parametrize(
    ("where", "value"),
    [("betas", [1, 0.999]), ("betas", [0.9, -0.1]), ("eps", -1e-8), ("weight_decay", -1.0)],
)
def test_adam_settings_outside_their_range_are_refused(runs, where, value):
    """Found by the fuzz test above: a beta of 1 makes Adam divide by 1 - 1 = 0, and the
    first step after the resume filled every weight with NaN."""
    refused = pytest.raises(MnistCnnError, match=f"optimizer state does not fit \\({where} ")
    with _edited_copy(runs, _group(where, value)) as (restore_it, _, _), refused:
        restore_it()


@pytest.mark.parametrize(
    ("where", "value", "says"),
    [
        ("lr", 9.22165186873078e37, "above the run's 0.001"),
        ("eps", 1.0, "the run's is 1e-08"),
        ("weight_decay", 1e30, "the run's is 0.0"),
        ("betas", [0.5, 0.999], "the run's is (0.9, 0.999)"),
    ],
)
def test_adam_settings_other_than_the_runs_are_refused(runs, where, value, says):
    """Found by the fuzz test above: a learning rate of 9.2e37 is finite and positive, and
    the first step after the resume filled every weight with infinities. The live optimizer
    was built from the run's config, which a resume cannot change: its settings are the ones
    the file must hold (the learning rate may be lower: a schedule lowers it from its peak)."""
    refused = pytest.raises(MnistCnnError, match=re.escape(f"({where} ") + ".*" + re.escape(says))
    with _edited_copy(runs, _group(where, value)) as (restore_it, _, _), refused:
        restore_it()


def test_a_learning_rate_below_the_runs_is_a_schedules_and_resumes(runs):
    with _edited_copy(runs, _group("lr", 1e-5)) as (restore_it, model, optimizer):
        restore_it()
        assert optimizer.param_groups[0]["lr"] == 1e-5  # the file's: the schedule's value
        loss_fn(model(torch.rand(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
        optimizer.step()
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize(
    ("flag", "value"),
    [("amsgrad", None), ("fused", None), ("capturable", True), ("maximize", True)],
)
def test_how_adam_computes_is_the_live_optimizers_not_the_files(runs, flag, value):
    """Found by the fuzz test above: ``"amsgrad": null`` passed the type check (a flag may be
    null) and then reached the fused kernel, which raised a TypeError mid-resume. The file's
    flags are only checked; the optimizer keeps the ones it was built with."""
    with _edited_copy(runs, _group(flag, value)) as (restore_it, model, optimizer):
        built = optimizer.param_groups[0][flag]
        restore_it()
        assert optimizer.param_groups[0][flag] == built
        loss_fn(model(torch.rand(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
        optimizer.step()
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _drop(key: str):
    def edit(tensors: dict, meta: dict) -> None:
        del tensors[key]

    return edit


def _set_tensor(key: str, make: Callable[[torch.Tensor], torch.Tensor]):
    def edit(tensors: dict, meta: dict) -> None:
        tensors[key] = make(tensors[key])

    return edit


def _add_tensor(tensors: dict, meta: dict) -> None:
    tensors["optim.x.exp_avg"] = torch.zeros(3)


def _add_group_key(tensors: dict, meta: dict) -> None:
    meta["optimizer"]["param_groups"][0]["momentum"] = 0.9


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (_set_meta(("optimizer", "param_groups"), {}), "(param_groups {}"),
        (_add_group_key, "(a param group"),
        (_group("params", [7, 6, 5, 4, 3, 2, 1, 0]), "(params"),
        (_group("lr", "fast"), "(lr 'fast')"),
        (_set_meta(("optimizer", "scalars"), {"99": {}}), "(scalars"),
        (_add_tensor, "(tensor 'optim.x.exp_avg')"),
        (_set_tensor("optim.0.exp_avg", lambda t: torch.zeros(3)), "has shape (3,)"),
        (_set_tensor("optim.0.exp_avg", lambda t: t * float("nan")), "NaN or infinite"),
        (_set_tensor("optim.0.exp_avg_sq", lambda t: t - 1), "negative values"),
        (_drop("optim.0.exp_avg"), "Adam state incomplete"),
        (_drop("rng.torch"), "random-number state"),
        (_set_meta(("model", "hidden"), 9), "saved for another network"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_each_damage_to_the_training_state_is_named(runs, edit, says):
    """The checks that stand between a checkpoint and the optimizer, one case each (the fuzz
    test above reaches them only by chance): each refuses in one line that says what."""
    with _edited_copy(runs, edit) as (restore_it, _, _), pytest.raises(MnistCnnError) as caught:
        restore_it()
    message = str(caught.value)
    assert says in message and "\n" not in message, message
