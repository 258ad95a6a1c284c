"""The fast path in whole runs: fast preset smoke, exact resume, --seed repeatability, bench.

On generated data (``tiny_data``): what is tested is the path, not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mnist_cnn import bench
from mnist_cnn.bench import format_table, run_bench
from mnist_cnn.checkpoint import load_model
from mnist_cnn.cli import main
from mnist_cnn.datasets import MNISTLike
from mnist_cnn.model import FastCNN, ModelConfig
from mnist_cnn.train import preset_config, resume, train


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


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_fast_preset_trains_and_reloads(tmp_path: Path, tiny_data: MNISTLike) -> None:
    logs: list[dict] = []
    train(_fast(batch_size=32), tmp_path / "run", data=tiny_data, on_log=logs.append)
    # 16 steps are too few for batch norm's running averages to settle, so judge the loss.
    assert logs[-1]["step"] == 16 and logs[-1]["loss"] < logs[1]["loss"]
    model, meta = load_model(tmp_path / "run")
    assert isinstance(model, FastCNN) and meta["model"]["arch"] == "fast-cnn"
    _, acts = model(tiny_data.test.images[:2].float().div(255), return_activations=True)
    c1, c2 = meta["model"]["conv1_channels"], meta["model"]["conv2_channels"]
    assert acts["conv1"].shape == (2, c1, 28, 28) and acts["conv2"].shape == (2, c2, 14, 14)
    assert set(acts) == {"conv1", "pool1", "conv2", "pool2", "fc1", "logits"}


def test_fast_path_resume_is_exact_and_seed_repeats(tmp_path: Path, tiny_data: MNISTLike) -> None:
    """Stopped at step 8 and resumed == never stopped == a second run with the same seed.

    The resume must start at the checkpoint (step 8), not redo steps 0-7: its records begin at
    step 8, and the run's metrics hold each logged step once.
    """
    data = tiny_data
    config = _fast()
    train(config, tmp_path / "whole", data=data)
    train(config, tmp_path / "again", data=data)

    def stop_at_8(rec: dict) -> None:
        if rec["step"] == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "stopped", data=data, on_log=stop_at_8)
    resumed: list[dict] = []
    result = resume(tmp_path / "stopped", data=data, on_log=resumed.append)
    assert [r["step"] for r in resumed] == [8, 16]  # a restart from 0 would log step 0 again
    assert result.steps == 16
    assert _steps(tmp_path / "stopped") == _steps(tmp_path / "whole") == [0, 8, 16]
    whole = _weights(tmp_path / "whole")
    for other in ("again", "stopped"):
        for name, value in _weights(tmp_path / other).items():
            assert torch.equal(value, whole[name]), (other, name)


def test_bench_counts_steps_and_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each loop runs warm-up (twice: memory, then timing) plus exactly ``steps`` timed steps,
    split over rounds with a remainder; images/s and the ratio follow from the times."""
    taken: dict[str, int] = {}

    def counted(name: str, make):
        def loop(*args, **kwargs):
            model, it = make(*args, **kwargs)

            def counting():
                for loss in it:
                    taken[name] = taken.get(name, 0) + 1
                    yield loss

            return model, counting()

        return loop

    monkeypatch.setattr(bench, "plain_loop", counted("plain", bench.plain_loop))
    monkeypatch.setattr(bench, "fast_loop", counted("fast", bench.fast_loop))
    images = torch.randint(0, 256, (400, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (400,))
    small = ModelConfig(conv1_channels=8, conv2_channels=16, hidden=32)
    rows = run_bench(
        "cpu", steps=5, warmup=1, rounds=2, batch_size=20, model_config=small,
        images=images, labels=labels,
    )  # fmt: skip
    assert taken == {"plain": 2 * 1 + 5, "fast": 2 * 1 + 5}  # 5 = 3 + 2 over two rounds
    assert [r.name for r in rows] == ["plain loop", "ours (fast path)"]
    for r in rows:
        assert r.steps == 5
        assert r.images_per_s == pytest.approx(5 * 20 / r.seconds, rel=1e-9)
    assert rows[1].ratio == pytest.approx(rows[1].images_per_s / rows[0].images_per_s, rel=1e-9)
    table = format_table(rows)
    assert table.count("\n") == 3
    for r in rows:
        assert f"| {r.name} | 5 | {r.images_per_s:,.0f} | {r.ratio:.2f}× |" in table


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
