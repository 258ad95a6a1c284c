"""The fast path in whole runs: fast preset smoke, exact resume, --seed repeatability, bench."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mnist_cnn.bench import format_table, run_bench
from mnist_cnn.checkpoint import load_model
from mnist_cnn.cli import main
from mnist_cnn.datasets import MNISTLike, Split
from mnist_cnn.model import FastCNN, ModelConfig
from mnist_cnn.train import preset_config, resume, train


def _subset(data: MNISTLike, n_train: int = 2000, n_eval: int = 500) -> MNISTLike:
    def cut(split: Split, n: int) -> Split:
        return Split(split.name, split.images[:n], split.labels[:n])

    return dataclasses.replace(
        data, train=cut(data.train, n_train), val=cut(data.val, n_eval), test=cut(data.test, n_eval)
    )


def _fast(steps: int = 16, batch_size: int = 16, **kw) -> object:
    return preset_config(
        "fast",
        steps=steps,
        batch_size=batch_size,
        seed=5,
        device="cpu",
        log_every=8,
        checkpoint_every=8,
        **kw,
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(run)
    return model.state_dict()


def test_fast_preset_trains_and_reloads(tmp_path: Path, mnist: MNISTLike) -> None:
    logs: list[dict] = []
    train(_fast(batch_size=32), tmp_path / "run", data=_subset(mnist), on_log=logs.append)
    # 16 steps are too few for batch norm's running averages to settle, so judge the loss.
    assert logs[-1]["step"] == 16 and logs[-1]["loss"] < logs[1]["loss"]
    model, meta = load_model(tmp_path / "run")
    assert isinstance(model, FastCNN) and meta["model"]["arch"] == "fast-cnn"
    _, acts = model(mnist.test.images[:2].float().div(255), return_activations=True)
    assert acts["conv1"].shape == (2, 16, 28, 28) and acts["conv2"].shape == (2, 32, 14, 14)
    assert set(acts) == {"conv1", "pool1", "conv2", "pool2", "fc1", "logits"}


def test_fast_path_resume_is_exact_and_seed_repeats(tmp_path: Path, mnist: MNISTLike) -> None:
    """Stopped at step 8 and resumed == never stopped == a second run with the same seed."""
    data = _subset(mnist)
    config = _fast()
    train(config, tmp_path / "whole", data=data)
    train(config, tmp_path / "again", data=data)

    def stop_at_8(rec: dict) -> None:
        if rec["step"] == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "stopped", data=data, on_log=stop_at_8)
    resume(tmp_path / "stopped", data=data)
    whole = _weights(tmp_path / "whole")
    for other in ("again", "stopped"):
        for name, value in _weights(tmp_path / other).items():
            assert torch.equal(value, whole[name]), (other, name)


def test_bench_table_smoke() -> None:
    images = torch.randint(0, 256, (400, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (400,))
    small = ModelConfig(conv1_channels=8, conv2_channels=16, hidden=32)
    rows = run_bench(
        "cpu", steps=4, warmup=1, rounds=2, model_config=small, images=images, labels=labels
    )
    assert [r.name for r in rows] == ["plain loop", "ours (fast path)"]
    assert rows[0].ratio == pytest.approx(1.0)
    assert all(r.images_per_s > 0 and r.steps == 4 for r in rows)
    table = format_table(rows)
    assert table.count("\n") == 3 and "ours (fast path)" in table


def test_cli_rejects_bf16_without_native_support(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnist_cnn import fast

    monkeypatch.setattr(fast, "native_bf16", lambda device: False)
    code = main(
        ["train", "--preset", "fast", "--steps", "1", "--precision", "bf16", "--device", "cpu",
         "--out", str(tmp_path / "r")]
    )  # fmt: skip
    assert code == 1
    assert "no native bf16" in capsys.readouterr().err
