"""The model card: written when training ends and by ``mnist-cnn card``; a Hub-style card."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from mnist_cnn.card import build_card
from mnist_cnn.cli import build_parser, main
from mnist_cnn.errors import CheckpointError

# tiny_run: the shared run of the seed network (conftest), read only here.


def test_training_writes_a_card_the_hub_parses(tiny_run: Path):
    text = (tiny_run / "README.md").read_text(encoding="utf-8")
    card = ModelCard(text)
    results = json.loads((tiny_run / "results.json").read_text())
    accuracy = results["test"]["accuracy"]
    assert card.data.license == "mit"
    assert card.data.library_name == "pytorch"
    assert card.data.datasets == ["ylecun/mnist"]
    assert "image-classification" in card.data.tags
    (result,) = card.data.eval_results
    assert result.metric_type == "accuracy" and result.dataset_split == "test"
    assert result.metric_value == accuracy  # the same number, not a rounded copy
    assert card.data.model_name == tiny_run.name  # the run folder's name
    # The body: accuracy, one row per class, the curves picture, loading without pickle.
    assert f"**{accuracy:.4f}**" in text
    for digit, acc in enumerate(results["test"]["per_class_accuracy"]):
        assert f"| {digit} | {acc:.4f} |" in text
    assert "![Training curves" in text and (tiny_run / "curves.png").is_file()
    assert "model.safetensors" in text and "pickle" in text
    assert "CPU" in text  # the machine, from config.json's environment


def test_the_card_command_reproduces_the_recorded_settings(tiny_run: Path):
    text = build_card(tiny_run)
    command = re.search(r"```sh\n(mnist-cnn train[^\n]*)\n```", text).group(1)
    args = build_parser().parse_args(shlex.split(command)[1:])
    recorded = json.loads((tiny_run / "config.json").read_text())["train"]
    assert (args.preset, args.steps, args.lr, args.seed) == (
        recorded["preset"],
        recorded["steps"],
        recorded["lr"],
        recorded["seed"],
    )
    assert "--batch-size" not in command  # only what differs from the preset (and the seed)


def test_values_from_the_run_are_escaped(tiny_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["environment"]["device"] = "<script>alert(1)</script>"
    (run / "config.json").write_text(json.dumps(config))
    assert main(["card", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run / 'README.md'}"
    text = (run / "README.md").read_text()
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    ModelCard(text)  # still a valid card

    (run / "results.json").write_text('{"test": {"accuracy": "high"}}')
    with pytest.raises(CheckpointError, match="no test accuracy"):
        build_card(run)
    (run / "config.json").write_text("{")
    assert main(["card", str(run)]) == 1
    assert "config.json: damaged" in capsys.readouterr().err


def test_front_matter_values_and_settings_no_flag_sets() -> None:
    """YAML scalars as the hub reads them; a recorded setting without a flag (from a newer or
    hand-edited config) is listed apart rather than turned into a flag that does not exist."""
    from mnist_cnn import card

    assert [card._yaml(v) for v in (None, True, False, 3, "a: b")] == [
        "null",
        "true",
        "false",
        "3",
        '"a: b"',
    ]
    command, unflagged = card.reproduce_command({"preset": "seed", "steps": 7, "warp": 2})
    assert command.split()[:4] == ["mnist-cnn", "train", "--steps", "7"]
    assert unflagged == [("warp", "2")] and "warp" not in command


def test_a_fast_run_card_states_its_label_smoothing(tiny_fast_run: Path, tiny_run: Path) -> None:
    """The card's training sentence names the smoothing a run trained with, and none for the
    seed recipe (which has none)."""
    smoothing = json.loads((tiny_fast_run / "config.json").read_text())["train"]["label_smoothing"]
    assert smoothing > 0 and f"label smoothing {smoothing:g}" in build_card(tiny_fast_run)
    assert "label smoothing" not in build_card(tiny_run)


def test_a_setting_recorded_before_it_existed_is_reproduced_as_its_old_default() -> None:
    """A fast run from before label smoothing: config.json lacks the setting, the run trained
    without it (TrainConfig's default), and the preset now smooths: the command must say 0."""
    from mnist_cnn import card
    from mnist_cnn.train import PRESETS

    recorded = {k: v for k, v in PRESETS["fast"].to_dict().items() if k != "label_smoothing"}
    command, unflagged = card.reproduce_command({**recorded, "seed": 3})
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.label_smoothing == 0.0 and args.preset == "fast" and unflagged == []
    command, _ = card.reproduce_command({**PRESETS["fast"].to_dict(), "seed": 3})
    assert "--label-smoothing" not in command  # recorded, and the preset's own


def test_a_card_needs_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a run folder"):
        build_card(tmp_path / "nowhere")


def test_a_fast_run_card_describes_its_third_stage(tiny_fast_run: Path, tiny_run: Path) -> None:
    """The network paragraph names the third conv stage where the network has one."""
    third = "a third 3×3 convolution (64 filters) with batch normalisation and ReLU, at 7×7;"
    assert third in build_card(tiny_fast_run) and "426,362 parameters" in build_card(tiny_fast_run)
    assert "third" not in build_card(tiny_run)
