import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnist_cnn.batches import batch_indices
from mnist_cnn.errors import ConfigError
from mnist_cnn.train import preset_config, train


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_cnn", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_seed_recipe_300_steps_reaches_90_percent(tmp_path, mnist):
    config = preset_config("seed", steps=300, seed=0, device="cpu", log_every=100)
    logs = []
    result = train(config, tmp_path / "run", data=mnist, on_log=logs.append)
    assert result.test.accuracy >= 0.90, result.test.accuracy
    assert [r["step"] for r in logs] == [0, 100, 200, 300]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["lr"] == 1e-4 and saved["train"]["batch_size"] == 50
    assert saved["train"]["model"]["dropout"] == 0.5
    assert saved["parameters"] == 3_274_634
    assert saved["environment"]["torch"] == torch.__version__
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert set(records[1]) >= {"step", "loss", "train_accuracy", "val_accuracy", "seconds"}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["accuracy"] == result.test.accuracy


def test_same_seed_same_weights_on_cpu(tmp_path, small_mnist):
    config = preset_config("seed", steps=15, seed=5, device="cpu", log_every=100)
    a = train(config, tmp_path / "a", data=small_mnist)
    b = train(config, tmp_path / "b", data=small_mnist)
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(
        preset_config("seed", steps=15, seed=6, device="cpu"), tmp_path / "c", data=small_mnist
    )
    assert not torch.equal(wa["fc1.weight"], _weights(c.run_dir)["fc1.weight"])


def test_the_last_step_is_always_logged(tmp_path, small_mnist):
    config = preset_config("seed", steps=7, seed=0, device="cpu", log_every=5)
    logs = []
    train(config, tmp_path / "run", data=small_mnist, on_log=logs.append)
    assert [r["step"] for r in logs] == [0, 5, 7]


def test_data_order_is_a_function_of_seed_and_step():
    first = batch_indices(seed=1, step=0, batch_size=50, n=1000)
    assert torch.equal(first, batch_indices(seed=1, step=0, batch_size=50, n=1000))
    epoch = torch.cat([batch_indices(1, s, 50, 1000) for s in range(20)])
    assert sorted(epoch.tolist()) == list(range(1000))  # one epoch sees every image once
    assert not torch.equal(batch_indices(1, 20, 50, 1000), first)  # a new epoch reshuffles


def test_refuses_to_overwrite_a_run(tmp_path, small_mnist):
    config = preset_config("seed", steps=2, seed=0, device="cpu")
    train(config, tmp_path / "run", data=small_mnist)
    with pytest.raises(ConfigError, match="--resume"):
        train(config, tmp_path / "run", data=small_mnist)


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (run / "checkpoint.safetensors").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_resume_after_sigkill_and_ctrl_c_gives_identical_weights(tmp_path, data_root):
    env = {**os.environ, "MNIST_CNN_DATA": str(data_root)}
    common = [
        "--steps",
        "40",
        "--checkpoint-every",
        "10",
        "--log-every",
        "20",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]
    ref = _cli("train", *common, "--out", str(tmp_path / "ref"), env=env)

    killed = _cli("train", *common, "--out", str(tmp_path / "killed"), env=env)
    _wait_for_checkpoint(tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL

    stopped = _cli("train", *common, "--out", str(tmp_path / "stopped"), env=env)
    _wait_for_checkpoint(tmp_path / "stopped", stopped)
    stopped.send_signal(signal.SIGINT)
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err and "Traceback" not in err

    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    reference = _weights(tmp_path / "ref")
    for name in ("killed", "stopped"):
        again = _cli("train", "--resume", str(tmp_path / name), env=env)
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        assert "test accuracy" in out
        resumed = _weights(tmp_path / name)
        assert all(torch.equal(reference[k], resumed[k]) for k in reference), name
        steps = [json.loads(x)["step"] for x in (tmp_path / name / "metrics.jsonl").open()]
        assert steps == [0, 20, 40], (name, steps)
