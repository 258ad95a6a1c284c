"""The fast path in whole runs: fast preset smoke, exact resume, --seed repeatability, bench.

On generated data (``tiny_data``): what is tested is the path, not accuracy.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from mnist_cnn import bench
from mnist_cnn import step as st
from mnist_cnn.bench import check_equivalence, format_report, format_table, run_bench, step_flops
from mnist_cnn.checkpoint import load_model
from mnist_cnn.cli import main
from mnist_cnn.datasets import MNISTLike
from mnist_cnn.model import FastCNN, ModelConfig
from mnist_cnn.train import TrainingInterrupted, preset_config, resume, train


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
    train(_fast(batch_size=32), tmp_path / "run", data=tiny_data, on_log=logs.append, curves=False)
    # 16 steps are too few for batch norm's running averages to settle, so judge the loss.
    assert logs[-1]["step"] == 16 and logs[-1]["loss"] < logs[1]["loss"]
    model, meta = load_model(tmp_path / "run")
    assert isinstance(model, FastCNN) and meta["model"]["arch"] == "fast-cnn"
    _, acts = model(tiny_data.test.images[:2].float().div(255), return_activations=True)
    c1, c2 = meta["model"]["conv1_channels"], meta["model"]["conv2_channels"]
    c3 = meta["model"]["conv3_channels"]
    assert acts["conv1"].shape == (2, c1, 28, 28) and acts["conv2"].shape == (2, c2, 14, 14)
    assert c3 == 64 and acts["conv3"].shape == (2, c3, 7, 7)
    assert set(acts) == {"conv1", "pool1", "conv2", "pool2", "conv3", "fc1", "logits"}


def test_fast_path_resume_is_exact_and_seed_repeats(tmp_path: Path, tiny_data: MNISTLike) -> None:
    """Stopped at step 8 and resumed == never stopped == a second run with the same seed.

    Ctrl-C arrives while step 8 is logged: the run checkpoints step 8 and stops. The resume
    must start there, not redo steps 0-7: it logs only step 16 (a restart from 0 would log 0
    and 8 again), and the run's metrics hold each logged step once.
    """
    data = tiny_data
    config = _fast()
    train(config, tmp_path / "whole", data=data, curves=False)
    train(config, tmp_path / "again", data=data, curves=False)

    def ctrl_c_at_8(rec: dict) -> None:
        if rec["step"] == 8:
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C

    with pytest.raises(TrainingInterrupted, match="interrupted at step 8"):
        train(config, tmp_path / "stopped", data=data, on_log=ctrl_c_at_8, curves=False)
    resumed: list[dict] = []
    result = resume(tmp_path / "stopped", data=data, on_log=resumed.append, curves=False)
    assert [r["step"] for r in resumed] == [16]
    assert result.steps == 16
    assert _steps(tmp_path / "stopped") == _steps(tmp_path / "whole") == [0, 8, 16]
    whole = _weights(tmp_path / "whole")
    for other in ("again", "stopped"):
        for name, value in _weights(tmp_path / other).items():
            assert torch.equal(value, whole[name]), (other, name)


SMALL = ModelConfig(conv1_channels=8, conv2_channels=16, hidden=32)


def _tiny_bench(**kw) -> object:
    images = torch.randint(0, 256, (400, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (400,))
    return bench.bench(
        "cpu", steps=4, warmup=1, rounds=2, model_config=SMALL, images=images, labels=labels,
        matmul_size=256, matmul_seconds=0.05, **kw,
    )  # fmt: skip


def test_bench_checks_equivalence_and_the_machine_rate() -> None:
    report = _tiny_bench(precision="fp32")
    assert [r.name for r in report.rows] == ["plain loop", "ours (fast path)"]
    assert all(r.steps == 4 for r in report.rows)  # the timed steps, warm-up excluded
    # The rate counts the network's arithmetic (a count of 0 or a per-step mix-up shows here).
    for r in report.rows:
        assert r.gflop_per_s == pytest.approx(r.images_per_s * step_flops(SMALL, 1) / 1e9)
    assert [e.precision for e in report.equivalence] == ["fp32"] and report.ok
    assert report.matmul.precision == "fp32" and report.matmul.gflop_per_s > 0
    assert report.fraction_of_limit == pytest.approx(
        report.rows[1].gflop_per_s / report.matmul.gflop_per_s
    )
    text = format_report(report)
    assert "fast path = plain step (fp32)" in text and "same function" in text
    assert "ours (fast path)" in text and "% of it" in text


def test_bench_leaves_the_allocator_as_a_plain_script_has_it(monkeypatch: pytest.MonkeyPatch):
    """Keeping freed memory holds for the whole process: set by the fast loop, it would speed
    the plain loop timed beside it (its page faults a step fall from ~6,000 to none), so bench
    leaves it out of every plan it builds, and says so in the plan it prints."""
    applied: list[bool] = []
    monkeypatch.setattr(st, "keep_freed_memory", lambda: applied.append(True) or True)
    monkeypatch.setattr(st, "can_keep_freed_memory", lambda: True)  # as on glibc
    assert st.resolve_plan(torch.device("cpu"), "fp32").freed_memory_kept  # train's plan has it
    report = _tiny_bench(precision="fp32")
    assert report.ok and not report.plan.freed_memory_kept
    assert "freed memory" not in format_report(report)
    assert not applied


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


def test_bench_bf16_row_where_bf16_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(st.BF16_SWITCH, "native")  # emulated where the CPU lacks it: tiny net
    rows = check_equivalence(torch.device("cpu"), "auto", model_config=SMALL, batch_size=8)
    assert [e.precision for e in rows] == ["fp32", "bf16"] and all(e.ok for e in rows)
    # bf16 differs from fp32 by more than fp32's rounding, but within bf16's.
    assert rows[1].difference > rows[0].difference


def test_bench_fails_when_the_fast_path_computes_another_function(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A fast path that drifts (here: its weights nudged by 1%) is caught; bench exits 1."""
    real = bench.prepare_model

    def drifting(model: torch.nn.Module, plan: st.StepPlan) -> torch.nn.Module:
        model = real(model, plan)
        if not plan.plain:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.01)
        return model

    monkeypatch.setattr(bench, "prepare_model", drifting)
    rows = check_equivalence(torch.device("cpu"), "fp32", model_config=SMALL, batch_size=8)
    assert not rows[0].ok
    real_bench = bench.bench
    monkeypatch.setattr(
        bench, "bench", lambda device, **kw: real_bench(device, **{**kw, "steps": 2})
    )
    monkeypatch.setattr(bench, "ModelConfig", lambda: SMALL)
    monkeypatch.setattr(bench, "TRAIN_IMAGES", 200)
    monkeypatch.setattr(bench, "DEFAULT_MATMUL_SIZE", 256)
    assert main(["bench", "--device", "cpu", "--precision", "fp32", "--steps", "2"]) == 1
    out = capsys.readouterr()
    assert "DIFFERENT" in out.out
    assert "images/s" not in out.out  # another function is not timed
    assert out.err.strip() == "mnist-cnn: error: the fast path disagrees with the plain step"


def test_cli_rejects_bf16_without_native_support_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(st.BF16_SWITCH, "absent")  # the AVX2 view
    code = main(
        ["train", "--preset", "fast", "--steps", "1", "--precision", "bf16", "--device", "cpu",
         "--out", str(tmp_path / "r")]
    )  # fmt: skip
    assert code == 1
    assert "no native bf16" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written: the same command can run later


def test_the_plan_is_recorded(tmp_path: Path, tiny_data: MNISTLike) -> None:
    logs: list[dict] = []
    config = _fast(steps=2, batch_size=8, precision="fp32")
    train(config, tmp_path / "run", data=tiny_data, on_log=logs.append, curves=False)
    plan = json.loads((tmp_path / "run" / "config.json").read_text())["plan"]
    assert plan["precision"] == "fp32" and plan["requested"] == "fp32"
    assert plan["channels_last"] and plan["fused_adam"] and not plan["cuda_graph"]
    assert plan["threads"] >= 1 and "torch kernels" in plan["hardware"]
    assert "plan" in logs[0] and all("plan" not in r for r in logs[1:])
