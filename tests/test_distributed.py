"""Data-parallel training under torchrun: 2 CPU processes over gloo against 1 process.

The runs use the generated data root ``tiny_root`` (83 validation images, 917 training images
and 101 test images: an odd count, so the two processes evaluate shards of 51 and 50) to stay
fast, in fp32: bf16 autocast (the default where the processor has it) rounds the 2-process
gradient average differently from the 1-process one, beyond what the comparison allows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnist_cnn.cli import main
from mnist_cnn.distributed import DistributedError, Parallel, current, process_group
from mnist_cnn.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
TEST_IMAGES = 101
LAUNCH_TIMEOUT_S = 150  # every wait on a child process is bounded


@pytest.fixture(scope="module")
def small_root(tiny_root: Path) -> Path:
    """The generated data root (see conftest): what is compared is 2 processes against 1."""
    return tiny_root


def _train_args(root: Path, out: Path, steps: int, dropout: float) -> list[str]:
    return [
        "train",
        "--data-dir",
        str(root),
        "--steps",
        str(steps),
        "--batch-size",
        "50",
        "--seed",
        "3",
        "--dropout",
        str(dropout),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--log-every",
        "1000",  # one record, at step 0: validation costs more than the steps
        "--checkpoint-every",
        "10",
        "--no-curves",  # matplotlib's start-up and a drawing: not what is compared
        "--out",
        str(out),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(args: list[str], nproc: int = 2, **kwargs) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port of its own: parallel test runs never collide
        f"--nproc_per_node={nproc}",
        "-m",
        "mnist_cnn",
        *args,
    ]
    return subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"torchrun still running after {LAUNCH_TIMEOUT_S} s:\n{out}\n{err}")
    return proc.returncode, out, err


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _checkpoint_step(run: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(run / "checkpoint.safetensors"), "pt") as fh:
        return json.loads(fh.metadata()["meta"])["step"]


# --------------------------------------------------------------------------- in one process


def test_single_process_is_a_no_op():
    par = current()
    assert par == Parallel() and par.is_main and not par.is_distributed
    idx = torch.arange(50)
    assert par.shard(idx) is idx
    par.check_batch(7)  # anything divides among one process
    state = torch.get_rng_state()
    par.seed_step(1, 2)
    assert torch.equal(torch.get_rng_state(), state)  # single-process runs keep the seed recipe
    with process_group() as joined:
        assert joined == Parallel()


def test_shards_tile_the_global_batch():
    idx = torch.arange(48)
    shards = [Parallel(rank=r, world_size=4).shard(idx) for r in range(4)]
    assert torch.equal(torch.cat(shards), idx)


def test_batch_must_divide_among_processes():
    with pytest.raises(ConfigError, match=r"--batch-size 50 is the global batch.*3 processes.*48"):
        Parallel(rank=0, world_size=3).check_batch(50)


def test_started_by_torchrun_without_joining_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="process_group"):
        current()


def test_a_launcher_variable_that_is_no_number_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE is not a whole number"):
        current()


def test_a_process_group_needs_a_positive_timeout(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="timeout must be positive"), process_group(0):
        pass


def test_no_other_process_to_join_is_one_line_and_leaves_nothing_behind(monkeypatch):
    """Rank 0 of 2 whose partner never comes (a wrong --master-port, a launcher that died):
    after the timeout, one line that says what to check; the SIGTERM handler is restored."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**env, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(DistributedError) as err, process_group(0.2):  # ~1 s: whole seconds
        pass
    assert "could not join the other processes" in str(err.value)
    assert "--master-port" in str(err.value) and "\n" not in str(err.value)
    assert signal.getsignal(signal.SIGTERM) is before
    assert not torch.distributed.is_initialized()


def test_ranks_draw_different_dropout_masks_and_the_same_again():
    def masks(rank: int, step: int) -> torch.Tensor:
        Parallel(rank=rank, world_size=2).seed_step(3, step)
        return torch.rand(8)

    assert not torch.equal(masks(0, 5), masks(1, 5))
    assert not torch.equal(masks(0, 5), masks(0, 6))
    assert torch.equal(masks(1, 5), masks(1, 5))


# --------------------------------------------------------------------------- under torchrun


@pytest.mark.slow
def test_a_rank_dies_then_the_resumed_run_ends_like_one_process(
    small_root: Path, tmp_path: Path, capsys
):
    """Kill rank 1 of 2 gloo processes (batch 25 each) at their first checkpoint: the launcher
    and rank 0 stop within a bounded time, saying why and how to resume. ``--resume`` under
    torchrun then ends where 1 process with batch 50 ends.

    Dropout is off: each process draws its own masks (by design, so processes never share
    them), which a single process cannot reproduce; everything else must agree up to float
    rounding of the gradient average. Every process must load the checkpoint for the weights
    to agree, and the resume must start from it, not from step 0.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    steps = 25  # the first checkpoint is at step 5; room for a kill that lands a few later
    # Start the 2-process run first (it would run far past ``steps``: it is stopped at its
    # first checkpoint) and train the 1-process reference while it starts.
    args = _train_args(small_root, two, steps=100_000, dropout=0.0)
    args[args.index("--checkpoint-every") + 1] = "5"
    proc = _torchrun(args)
    killed: list[float] = []  # when rank 1 was killed

    def kill_rank_1_at_the_first_checkpoint() -> None:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (two / "checkpoint.safetensors").is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                return  # the assertions below say what went wrong
            time.sleep(0.02)
        ranks = {_rank_of(p): p for p in _children(proc.pid)}
        if 1 in ranks:
            os.kill(ranks[1], signal.SIGKILL)
            killed.append(time.monotonic())

    watcher = threading.Thread(target=kill_rank_1_at_the_first_checkpoint)
    watcher.start()
    try:
        assert main(_train_args(small_root, one, steps=steps, dropout=0.0)) == 0
        capsys.readouterr()
        watcher.join(LAUNCH_TIMEOUT_S)
        assert killed, "rank 1 was not found running once a checkpoint appeared"
        rc, out, err = _finish(proc)
        waited = time.monotonic() - killed[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc != 0
    assert waited < 60, waited
    # torchrun names the dead rank; rank 0 says in one line that the run stopped and why.
    assert "rank: 1" in err and "SIGKILL" in err, err
    assert "mnist-cnn: error:" in err and "--resume" in err, err
    # Rank 0 alone prints: one log line, for step 0.
    assert out.count("step 0,") == 1 and "test accuracy" not in out, out
    at = _checkpoint_step(two)
    assert at % 5 == 0 and 5 <= at < steps, at  # where the resume must start (usually 5)

    rc, out, err = _finish(
        _torchrun(["train", "--resume", str(two), "--steps", str(steps), "--no-curves"])
    )
    assert rc == 0, err
    config = json.loads((two / "config.json").read_text())
    assert config["train"]["steps"] == steps
    # The resume starts at the checkpoint: a restart would log step 0 again.
    assert "step 0," not in out and out.count(f"step {steps},") == 1, out
    assert out.count("test accuracy") == 1 and f"trained {steps} steps" in out, out
    assert config["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert config["plan"]["precision"] == "fp32"

    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys()
    for name in w1:
        # Adam divides each gradient by its running scale: where a gradient is ~0 (an fc1 unit
        # that hardly fires) the rounding noise of the 2-way average becomes a step of up to
        # lr = 1e-4. So: every weight within a few such steps, almost all within 1e-5.
        diff = (w1[name] - w2[name]).abs()
        assert diff.max() < 5e-4, (name, diff.max())
        assert (diff > 1e-5).float().mean() < 1e-3, (name, (diff > 1e-5).sum())
    assert not torch.equal(w1["fc1.weight"], _weights_at_init())  # it did train

    # Records at step 0 and at the end (rank 0 only writes; records add up across resumes),
    # with the global batch's figures.
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [0, steps]
    assert m2[0]["train_accuracy"] == pytest.approx(m1[0]["train_accuracy"])
    assert m2[0]["val_accuracy"] == pytest.approx(m1[0]["val_accuracy"])

    # The 101 test images are split 51 + 50 and summed: each counted once.
    r1 = json.loads((one / "results.json").read_text())["test"]
    r2 = json.loads((two / "results.json").read_text())["test"]
    assert r2["total"] == TEST_IMAGES == r1["total"]
    assert r2["confusion"] == r1["confusion"]


def _weights_at_init() -> torch.Tensor:
    from mnist_cnn.model import build_model

    torch.manual_seed(3)
    return build_model().state_dict()["fc1.weight"]


def test_a_batch_that_does_not_split_is_refused_before_joining(tmp_path: Path, monkeypatch, capsys):
    """Each process torchrun starts refuses a global batch that does not split among them, in
    one line, before it waits for the others and before the run folder exists. (No launcher
    runs here: a process that tried to join would fail with another message.)"""
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    args = _train_args(tmp_path / "data", tmp_path / "run", steps=2, dropout=0.0)
    args[args.index("--batch-size") + 1] = "51"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnist-cnn: error: --batch-size 51 is the global batch"), err
    assert "try 50 or 52" in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None
