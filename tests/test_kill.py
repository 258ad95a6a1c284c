"""SIGKILL a training at random moments, checkpoint writes included; it always resumes, and ends
with the weights of a run that never stopped (fp32 on the CPU: bit for bit)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
import traceback
from pathlib import Path

import pytest
import torch

from mnist_cnn import checkpoint
from mnist_cnn.model import build_model
from mnist_cnn.rundir import RunDir, RunState
from mnist_cnn.step import make_optimizer, prepare_model
from mnist_cnn.train import TrainConfig, plan_for, restore, resume, train

from .run_util import same_weights, tiny_config, tiny_data, weights

DATA = tiny_data()
ROUNDS = 8


def _start(run: Path, config: TrainConfig, kill_at_write: int) -> int:
    """Fork a process that trains RUN (new or resumed); with ``kill_at_write`` > 0 it kills
    itself when that many safetensors files are written but not yet renamed into place."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: never returns into pytest
        if kill_at_write:
            real_save, written = checkpoint.save_file, []

            def save_then_die(tensors, path, metadata=None):
                real_save(tensors, path, metadata=metadata)
                written.append(path)
                if len(written) == kill_at_write:
                    os.kill(os.getpid(), signal.SIGKILL)  # the temp file is left behind

            checkpoint.save_file = save_then_die
        if RunDir(run).state() is RunState.NEW:
            train(config, run, data=DATA)
        else:
            resume(run, data=DATA)
        os._exit(0)
    except BaseException:
        traceback.print_exc()
        os._exit(1)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _wait(pid: int, kill_after: float | None = None, watch: Path | None = None) -> int:
    """The child's wait status. With ``kill_after``: SIGKILL it that many seconds after it has
    (re)written ``watch``, if it still runs then."""
    deadline = time.monotonic() + 60
    before = _mtime(watch) if watch is not None else 0
    kill_at = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        now = time.monotonic()
        if kill_after is not None and kill_at is None and _mtime(watch) != before:
            kill_at = now + kill_after
        if kill_at is not None and now >= kill_at:
            os.kill(pid, signal.SIGKILL)
            kill_at = math.inf
        if now > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("a training process hung")
        time.sleep(0.001)


def _check_resumable(run: Path, config: TrainConfig) -> None:
    """What --resume needs reads back cleanly: config, metrics, and the checkpoint if any."""
    folder = RunDir(run)
    state = folder.state()
    assert state is not RunState.FOREIGN
    if state is RunState.NEW:
        return
    folder.read_config()
    folder.read_metrics(missing_ok=True)
    if state is RunState.CHECKPOINTED:
        plan = plan_for(config, torch.device("cpu"))
        model = prepare_model(build_model(config.model), plan)
        assert (
            restore(folder, model, make_optimizer(model.parameters(), config.lr, plan), config).step
            > 0
        )


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]


def test_sigkill_at_random_moments_always_resumes_to_identical_weights(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in every process, and cheap steps
    try:
        config = tiny_config(steps=60, checkpoint_every=1, log_every=4)  # room for 8 kills
        ref = train(config, tmp_path / "ref", data=DATA)
        per_step = ref.seconds / config.steps  # checkpoint writes included
        run = tmp_path / "run"
        rng = random.Random(9)
        kills = 0
        for i in range(ROUNDS):
            if i % 2 == 0:  # inside a checkpoint write: the 1st..4th file of this process
                status = _wait(_start(run, config, kill_at_write=rng.randint(1, 4)))
                assert [p for p in run.iterdir() if ".tmp." in p.name]  # an orphan temp file
            else:  # at a random moment of the next two steps after a checkpoint
                pid = _start(run, config, 0)
                when = rng.uniform(0, 2 * per_step)
                status = _wait(pid, when, watch=run / "checkpoint.safetensors")
            if os.WIFEXITED(status):
                assert os.WEXITSTATUS(status) == 0
                break  # it finished before the kill
            assert os.WTERMSIG(status) == signal.SIGKILL
            kills += 1
            _check_resumable(run, config)
        assert kills >= ROUNDS - 1, kills
        if RunDir(run).state() is not RunState.FINISHED:
            assert _wait(_start(run, config, 0)) == 0
        assert RunDir(run).state() is RunState.FINISHED
        assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
        assert same_weights(weights(run), weights(tmp_path / "ref"))
        assert _records(run) == _records(tmp_path / "ref")
    finally:
        torch.set_num_threads(threads)
