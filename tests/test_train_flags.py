"""`mnist-cnn train --schedule/--shift`: parsed, validated, and passed into the run's config."""

from __future__ import annotations

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


def test_presets_keep_their_own_schedule_and_shift(monkeypatch: pytest.MonkeyPatch) -> None:
    seed = _config_from([], monkeypatch)
    assert (seed.schedule, seed.shift) == ("constant", 0)
    fast = _config_from(["--preset", "fast"], monkeypatch)
    assert (fast.schedule, fast.shift) == ("onecycle", 1)
    argv = ["--preset", "fast", "--schedule", "constant", "--shift", "0"]
    plain = _config_from(argv, monkeypatch)
    assert (plain.schedule, plain.shift) == ("constant", 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shift", "5"], "argument --shift: must lie in 0-4, got 5"),
        (["--shift", "-1"], "argument --shift: must lie in 0-4, got -1"),
        (["--shift", "1.5"], "argument --shift: expected whole pixels, got '1.5'"),
        (["--schedule", "cosine"], "argument --schedule: invalid choice: 'cosine'"),
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
