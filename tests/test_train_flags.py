"""`mnist-cnn train --schedule/--shift/--label-smoothing`: parsed, validated, and passed into the
run's config; `--no-curves` reaches the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_cnn import cli
from mnist_cnn import train as train_mod


class _Stop(Exception):
    pass


def _config_from(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> train_mod.TrainConfig:
    """Run the CLI's train command up to the library call and return the config it built."""
    seen = {}

    def fake_train(config, out_dir, **kwargs):
        seen["config"] = config
        raise _Stop

    monkeypatch.setattr(train_mod, "train", fake_train)
    with pytest.raises(_Stop):
        cli.main(["train", *argv])
    return seen["config"]


def test_schedule_and_shift_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_from(["--schedule", "onecycle", "--shift", "2"], monkeypatch)
    assert (config.preset, config.schedule, config.shift) == ("seed", "onecycle", 2)


def test_label_smoothing_reaches_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _config_from(["--label-smoothing", "0.2"], monkeypatch).label_smoothing == 0.2


def test_presets_keep_their_own_schedule_shift_and_smoothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed = _config_from([], monkeypatch)
    assert (seed.schedule, seed.shift, seed.label_smoothing) == ("constant", 0, 0.0)
    fast = _config_from(["--preset", "fast"], monkeypatch)
    assert (fast.schedule, fast.shift) == ("onecycle", 1) and fast.label_smoothing > 0
    argv = ["--preset", "fast", "--schedule", "constant", "--shift", "0", "--label-smoothing", "0"]
    plain = _config_from(argv, monkeypatch)
    assert (plain.schedule, plain.shift, plain.label_smoothing) == ("constant", 0, 0.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shift", "5"], "argument --shift: must lie in 0-4, got 5"),
        (["--shift", "-1"], "argument --shift: must lie in 0-4, got -1"),
        (["--shift", "1.5"], "argument --shift: expected whole pixels, got '1.5'"),
        (["--schedule", "cosine"], "argument --schedule: invalid choice: 'cosine'"),
        (["--label-smoothing", "1"], "argument --label-smoothing: must lie in [0, 1), got 1"),
        (["--label-smoothing", "nan"], "argument --label-smoothing: must lie in [0, 1), got nan"),
        (["--label-smoothing", "-0.1"], "argument --label-smoothing: must lie in [0, 1)"),
        (["--label-smoothing", "lots"], "argument --label-smoothing: expected a number, got"),
    ],
)
def test_bad_values_are_one_line_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_states_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "constant (seed), or onecycle (fast:" in text
    assert "0-4 (seed: 0, fast: 1)" in text
    smoothing = train_mod.PRESETS["fast"].label_smoothing
    assert f"0 <= S < 1 (seed: 0, fast: {smoothing:g})" in text


def test_resume_refuses_a_new_label_smoothing(capsys: pytest.CaptureFixture[str]) -> None:
    """A run continues with its own recipe: changing the loss half-way is refused."""
    assert cli.main(["train", "--resume", "runs/x", "--label-smoothing", "0.1"]) != 0
    err = capsys.readouterr().err
    assert "--label-smoothing cannot be used with --resume" in err and "\n" not in err.strip()


def test_no_curves_leaves_the_picture_out_until_asked(
    tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--no-curves` draws no curves.png, for a new run and a resumed one (whose old picture
    goes: it showed a shorter run); `mnist-cnn plot RUN` draws it later. Fails if the flag is
    not passed to train() or to resume() (that a run draws it by default, test_cli's
    end-to-end run checks)."""
    run = tmp_path / "run"
    argv = ["train", "--data-dir", str(tiny_root), "--steps", "2", "--seed", "0"]
    common = ["--device", "cpu", "--log-every", "100", "--checkpoint-every", "100"]
    assert cli.main([*argv, *common, "--no-curves", "--out", str(run)]) == 0
    assert not (run / "curves.png").exists()
    assert cli.main(["plot", str(run)]) == 0 and (run / "curves.png").is_file()
    assert cli.main(["train", "--resume", str(run), "--steps", "3", "--no-curves"]) == 0
    assert not (run / "curves.png").exists()
    capsys.readouterr()
