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

from mnist_cnn.batches import BatchSource
from mnist_cnn.errors import ConfigError
from mnist_cnn.model import ModelConfig
from mnist_cnn.train import preset_config, resume, train


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


@pytest.mark.slow
def test_seed_recipe_300_steps_reaches_90_percent(tmp_path, mnist):
    """The accuracy gate: the seed recipe learns real digits (on every second test image: 5,000
    from both halves of the test set, whose first half is the easier)."""
    import dataclasses

    from mnist_cnn.datasets import Split

    # Validation is logged 4 times; 1,000 images tell progress as well as 5,000. The test pass
    # over all 10,000 took 6 s of one thread; 5,000 tell 90% from less as well.
    val = Split("val", mnist.val.images[:1000], mnist.val.labels[:1000])
    test = Split("test", mnist.test.images[::2], mnist.test.labels[::2])
    config = preset_config("seed", steps=300, seed=0, device="cpu", log_every=100)
    logs = []
    data = dataclasses.replace(mnist, val=val, test=test)
    result = train(config, tmp_path / "run", data=data, on_log=logs.append, curves=False)
    assert result.test.accuracy >= 0.90 and result.test.total == 5_000, result.test
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


# The seed network's layers at a fiftieth of the arithmetic: for tests of the training path.
SMALL_SEED_NET = ModelConfig(conv1_channels=8, conv2_channels=16, hidden=32)


def test_same_seed_same_weights_on_cpu(tmp_path, tiny_data):
    import dataclasses

    config = preset_config(
        "seed", steps=15, seed=5, device="cpu", log_every=100, model=SMALL_SEED_NET
    )
    a = train(config, tmp_path / "a", data=tiny_data, curves=False)
    b = train(config, tmp_path / "b", data=tiny_data, curves=False)
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    other = dataclasses.replace(config, seed=6)
    c = train(other, tmp_path / "c", data=tiny_data, curves=False)
    assert not torch.equal(wa["fc1.weight"], _weights(c.run_dir)["fc1.weight"])


def test_the_last_step_is_always_logged(tmp_path, tiny_data):
    config = preset_config("seed", steps=7, seed=0, device="cpu", log_every=5, model=SMALL_SEED_NET)
    logs = []
    train(config, tmp_path / "run", data=tiny_data, on_log=logs.append, curves=False)
    assert [r["step"] for r in logs] == [0, 5, 7]


def test_data_order_is_a_function_of_seed_and_step():
    """The batches training draws (its BatchSource over epoch_order), traced by label = index."""
    n, size = 1000, 50
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    labels = torch.arange(n)

    def feed(seed: int) -> BatchSource:
        return BatchSource(images, labels, seed=seed, batch_size=size)

    source = feed(1)
    epoch = [source(s)[1] for s in range(n // size)]
    assert sorted(torch.cat(epoch).tolist()) == list(range(n))  # one epoch sees every image once
    assert not torch.equal(torch.cat(epoch), labels)  # shuffled
    assert not torch.equal(source(20)[1], epoch[0])  # a new epoch reshuffles
    # A fresh feed (as after a resume) asked for step 27 first gives what the first one gave.
    later = source(27)[1]
    assert torch.equal(feed(1)(27)[1], later)
    assert not torch.equal(feed(2)(27)[1], later)  # another seed, another order


def test_plain_step_trains_like_the_fast_path(tmp_path, tiny_data):
    """train(..., fast=False) (--plain-step) runs through train() and ends where the fast path
    ends, in fp32, up to the rounding of fused Adam and channels-last convolutions."""
    import dataclasses

    config = preset_config(
        "seed", steps=10, seed=4, device="cpu", log_every=5, precision="fp32", model=SMALL_SEED_NET
    )
    plain_config = dataclasses.replace(config, fast=False)
    plain = train(plain_config, tmp_path / "plain", data=tiny_data, curves=False)
    quick = train(config, tmp_path / "fast", data=tiny_data, curves=False)
    saved = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert saved["train"]["fast"] is False
    start = _weights_after(config, tmp_path, tiny_data)
    wp, wf = _weights(plain.run_dir), _weights(quick.run_dir)
    for name in wp:
        # Each of the 10 Adam steps moves a weight by about lr = 1e-4 (so a path that skips or
        # misapplies steps differs by ~1e-3 nearly everywhere). Rounding differences stay near
        # 1e-6, except where a gradient is ~0 and Adam's division magnifies them to a step.
        diff = (wp[name] - wf[name]).abs()
        assert diff.max() < 5e-4, (name, diff.max())
        assert (diff > 1e-5).float().mean() < 5e-3, (name, (diff > 1e-5).sum())
        assert not torch.equal(wp[name], start[name]), name  # it trained


def _weights_after(config, tmp_path, data) -> dict[str, torch.Tensor]:
    """The weights after one step of the same seed: what the 10-step runs started near."""
    import dataclasses

    one = dataclasses.replace(config, steps=1)
    return _weights(train(one, tmp_path / "one", data=data, curves=False).run_dir)


def test_curves_can_be_left_out_and_a_stale_picture_goes(tmp_path, tiny_data):
    """By default a run ends by drawing curves.png, and its card shows it. ``curves=False``
    draws none; a resumed run then also loses the picture of its shorter self (which would show
    a run that is not this one), and its card no longer points at it."""
    config = preset_config("seed", steps=2, seed=0, device="cpu", model=SMALL_SEED_NET)
    run = tmp_path / "run"
    train(config, run, data=tiny_data)
    assert (run / "curves.png").is_file() and "![Training curves" in (run / "README.md").read_text()
    resume(run, steps=4, data=tiny_data, curves=False)
    assert not (run / "curves.png").exists()
    assert "![Training curves" not in (run / "README.md").read_text()
    train(config, tmp_path / "none", data=tiny_data, curves=False)
    assert not (tmp_path / "none" / "curves.png").exists()
    resume(run, steps=6, data=tiny_data)
    assert (run / "curves.png").is_file()


def test_label_smoothing_reaches_the_loss_a_run_trains_on(tmp_path, tiny_data):
    """The config's label smoothing is what train() steps with, and config.json records it
    (a resume reads it back): three steps with and without it end on other weights. Three,
    since Adam's first update is ±lr whatever the gradient's size."""
    import dataclasses

    config = preset_config("fast", steps=3, seed=0, device="cpu", log_every=100, batch_size=32)
    assert config.label_smoothing > 0
    smoothed = train(config, tmp_path / "s", data=tiny_data, curves=False)
    plain_config = dataclasses.replace(config, label_smoothing=0.0)
    plain = train(plain_config, tmp_path / "p", data=tiny_data, curves=False)
    ws, wp = _weights(smoothed.run_dir), _weights(plain.run_dir)
    assert any(not torch.equal(ws[k], wp[k]) for k in ws)
    saved = json.loads((tmp_path / "s" / "config.json").read_text())["train"]
    assert saved["label_smoothing"] == config.label_smoothing


def test_refuses_to_overwrite_a_run(tmp_path, tiny_data):
    config = preset_config("seed", steps=2, seed=0, device="cpu", model=SMALL_SEED_NET)
    train(config, tmp_path / "run", data=tiny_data, curves=False)
    before = _weights(tmp_path / "run")
    with pytest.raises(ConfigError, match="--resume"):
        train(config, tmp_path / "run", data=tiny_data, curves=False)
    after = _weights(tmp_path / "run")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the old run is untouched


@pytest.mark.slow  # two processes; the in-process resume tests are in the fast tier
def test_resume_after_sigkill_and_ctrl_c_gives_identical_weights(
    tmp_path, tiny_root, monkeypatch, capsys
):
    """Real processes, real signals, on generated data: resume starts at the checkpoint.

    Two `mnist-cnn train` processes, side by side, are stopped once their first checkpoint is
    written, one by SIGKILL, one by SIGINT (Ctrl-C: exit 130, one line saying how to resume).
    Each run is then resumed through the same command line, in this process: it must not log
    step 0 (it would, had it started over), must log the steps after its checkpoint once each,
    and end with the weights of the same command run without a stop (also here). The processes
    compute with as many threads as this one, so that all add up floating-point sums alike.
    """
    from mnist_cnn.cli import main
    from mnist_cnn.rundir import RunDir, RunState

    env = {
        **os.environ,
        "MNIST_CNN_DATA": str(tiny_root),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    monkeypatch.setenv("MNIST_CNN_DATA", str(tiny_root))
    # The fast preset's network: a tenth of the seed network's arithmetic, and its run has
    # more to restore (batch-norm statistics, the one-cycle schedule's position).
    common = ["--preset", "fast", "--steps", "40", "--checkpoint-every", "5", "--log-every", "40"]
    common += ["--eval-batch-size", "1000", "--seed", "3", "--device", "cpu", "--no-curves"]
    killed = _cli("train", *common, "--out", str(tmp_path / "killed"), env=env)
    stopped = _cli("train", *common, "--out", str(tmp_path / "stopped"), env=env)
    # Each is stopped as soon as its first checkpoint is there (both are watched at once: the
    # second must not run to its end while the first is handled).
    signals = {"killed": (killed, signal.SIGKILL), "stopped": (stopped, signal.SIGINT)}
    deadline = time.monotonic() + 120
    while signals:
        for name, (proc, sig) in list(signals.items()):
            assert proc.poll() is None, (name, proc.communicate())  # finished before a stop
            if (tmp_path / name / "checkpoint.safetensors").exists():
                proc.send_signal(sig)
                del signals[name]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err and "Traceback" not in err

    assert main(["train", *common, "--out", str(tmp_path / "ref")]) == 0
    capsys.readouterr()
    reference = _weights(tmp_path / "ref")
    for name in ("killed", "stopped"):
        assert RunDir(tmp_path / name).state() is RunState.CHECKPOINTED, name  # not finished
        assert main(["train", "--resume", str(tmp_path / name), "--no-curves"]) == 0
        out = capsys.readouterr().out
        logged = [
            int(line.split(",")[0].split()[1])
            for line in out.splitlines()
            if line.startswith("step ")
        ]
        assert logged and logged[0] > 0 and logged[-1] == 40, (name, out)  # not from step 0
        assert "trained 40 steps" in out, out
        resumed = _weights(tmp_path / name)
        assert all(torch.equal(reference[k], resumed[k]) for k in reference), name
        steps = [json.loads(x)["step"] for x in (tmp_path / name / "metrics.jsonl").open()]
        assert steps == [0, 40], (name, steps)
