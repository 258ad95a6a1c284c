"""A model card for a run: ``mnist-cnn card RUN`` writes ``RUN/README.md``.

The card is what model hubs show first: YAML front matter as Hugging Face model cards use it
(license, library, datasets, tags and a ``model-index`` entry with the test accuracy), then what
the network is, the command that reproduces it, where and how long it trained, test and
per-class accuracy, the curves picture, limitations and how to load the weights.

It is rendered from ``templates/card.md.j2`` with autoescaping on: Markdown passes HTML
through, so every value read from the run's files is HTML-escaped in the body; in the front
matter each string is a JSON-quoted YAML scalar. Training writes the card when it ends.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from markupsafe import Markup

from . import rundir
from .checkpoint import load_model, model_file
from .digitness import SHIFT, VAL_QUANTILE, VAL_SKIP, K, stored_scorer
from .errors import CheckpointError
from .fileio import atomic_write_bytes
from .rundir import CONFIG_FILE, CURVES_FILE, RESULTS_FILE, RunDir, run_classes
from .templates import environment

CARD_FILE = rundir.CARD_FILE
LICENSE = "mit"
# Hugging Face Hub names of the datasets (only those that have one we know to be right).
HUB_DATASETS = {"mnist": "ylecun/mnist", "fashion-mnist": "zalando-datasets/fashion_mnist"}
DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "kmnist": "Kuzushiji-MNIST"}
DATASET_ITEMS = {"mnist": "handwritten digit", "fashion-mnist": "clothing item",
                 "kmnist": "cursive Japanese character"}  # fmt: skip
NETWORKS = {
    "deep-mnist": (
        "convolutional network (the classic “Deep MNIST” recipe)",
        "Two 5×5 convolutions ({c1} and {c2} filters, SAME padding, ReLU), each followed by 2×2 "
        "max-pooling; a fully connected layer of {hidden} units with ReLU and dropout "
        "({dropout} in training); a linear layer to the ten classes.",
    ),
    "fast-cnn": (
        "small batch-normalised convolutional network (mnist-cnn's fast preset)",
        "Two {k}×{k} convolutions ({c1} and {c2} filters), each followed by 2×2 max-pooling, "
        "batch normalisation and ReLU;{third} a fully connected layer of {hidden} units with batch "
        "normalisation and ReLU; a linear layer to the ten classes.",
    ),
}
# Settings that do not change the weights a run ends with, or name this machine's folders.
NOT_REPRODUCED = {"data_dir", "tensorboard", "log_every", "checkpoint_every", "device"}
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")  # a YAML key that needs no quotes
_PLAIN = re.compile(r"^[A-Za-z0-9 ._=/+-]+$")  # characters a command line needs no escaping for


def _yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars; every string JSON-quoted (valid YAML)."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            key = k if _KEY.match(str(k)) else json.dumps(str(k))
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{key}:\n{_yaml(v, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_yaml(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for v in value:
            if isinstance(v, dict) and v:
                inner = _yaml(v, indent + 2).lstrip()
                lines.append(f"{pad}- {inner}")
            else:
                lines.append(f"{pad}- {_yaml(v)}")
        return "\n".join(lines)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(str(value))


def reproduce_command(train: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """``mnist-cnn train ...`` for a run's recorded settings, and those no flag can set."""
    from .cli import build_parser
    from .train import PRESETS, TrainConfig

    preset = str(train.get("preset", "seed"))
    base = PRESETS[preset].to_dict() if preset in PRESETS else {}
    # A setting the run's config.json lacks (recorded before the setting existed) had its
    # default then, which a preset may since have changed (the fast preset's label smoothing).
    defaults = {k: v for k, v in TrainConfig().to_dict().items() if v is not None}
    missing = {k: v for k, v in defaults.items() if k not in train and k != "model"}
    flat = {k: v for k, v in {**missing, **train}.items() if k != "model"}
    flat["dropout"] = (train.get("model") or {}).get("dropout")
    base_flat = {k: v for k, v in base.items() if k != "model"}
    base_flat["dropout"] = (base.get("model") or {}).get("dropout")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    actions = {a.dest: a for a in sub.choices["train"]._actions if a.option_strings}
    words = ["mnist-cnn", "train"]
    if preset != "seed":
        words += ["--preset", preset]
    unflagged: list[tuple[str, str]] = []
    for key, value in flat.items():
        if (
            key in NOT_REPRODUCED
            or key == "preset"
            or (key != "seed" and value == base_flat.get(key))
        ):
            continue
        action = actions.get(key)
        if action is None:
            unflagged.append((key, json.dumps(value)))
        elif action.nargs == 0:  # a switch: present when the value differs from the preset
            words.append(action.option_strings[-1])
        else:
            words += [action.option_strings[-1], str(value)]
    model = train.get("model") or {}
    for key, value in model.items():
        if key != "dropout" and value != (base.get("model") or {}).get(key):
            unflagged.append((f"model.{key}", json.dumps(value)))
    return " ".join(shlex.quote(w) for w in words), unflagged


def _ordinal(n: int) -> str:
    """2nd, 3rd, 5th, 11th, 21st."""
    last = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{last}"


def build_card(run: str | os.PathLike[str]) -> str:
    """The model card of RUN (a run folder) as Markdown with YAML front matter."""
    folder = Path(run)
    if not folder.is_dir():
        raise CheckpointError(f"{run}: not a run folder")
    model, meta = load_model(model_file(folder), "cpu")
    run = RunDir(folder)
    config = run.read_config() if run.file(CONFIG_FILE).exists() else {}
    results = run.read_results()
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    dataset, names = run_classes(folder, meta)
    classes = list(names)
    c = model.config
    title, description = NETWORKS.get(c.arch, (f"{c.arch} network", ""))
    description = description.format(
        c1=c.conv1_channels, c2=c.conv2_channels, k=c.kernel_size, hidden=c.hidden,
        dropout=c.dropout,
        third=(
            f" a third {c.kernel_size}×{c.kernel_size} convolution ({c.conv3_channels} filters) "
            "with batch normalisation and ReLU, at 7×7;" if c.conv3_channels else ""
        ),
    )  # fmt: skip
    test = results.get("test") if results else None
    if test is not None and not isinstance(test.get("accuracy"), (int, float)):
        raise CheckpointError(f"{folder / RESULTS_FILE}: no test accuracy")
    name = folder.resolve().name
    step = (results or {}).get("step", meta.get("step"))

    front: dict[str, Any] = {
        "license": LICENSE,
        "library_name": "pytorch",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "mnist-cnn", "pytorch", "safetensors", dataset],
    }
    if dataset in HUB_DATASETS:
        front["datasets"] = [HUB_DATASETS[dataset]]
    if test is not None:
        entry_dataset = {"name": DATASET_TITLES.get(dataset, dataset), "type": dataset}
        if dataset in HUB_DATASETS:
            entry_dataset["type"] = HUB_DATASETS[dataset]
        entry_dataset["split"] = "test"
        front["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": entry_dataset,
                        "metrics": [
                            {"type": "accuracy", "value": float(test["accuracy"]),
                             "name": "Test accuracy"}
                        ],
                    }
                ],
            }
        ]  # fmt: skip

    command, unflagged = reproduce_command(train) if train else ("mnist-cnn train", [])
    if not _PLAIN.match(command.replace("'", "")):
        command = Markup.escape(command)  # odd characters: shown, but never as markup
    else:
        command = Markup(command)

    env_info = config.get("environment") if isinstance(config.get("environment"), dict) else {}
    machine: list[tuple[str, str]] = []
    for key in ("device", "platform", "torch", "python", "mnist_cnn", "git_revision"):
        if env_info.get(key) is not None:
            machine.append((key, str(env_info[key])))
    plan = config.get("plan")
    if isinstance(plan, dict):
        machine += [(f"plan: {k}", json.dumps(v) if not isinstance(v, str) else v)
                    for k, v in plan.items()]  # fmt: skip
    seconds = (results or {}).get("train_seconds")
    training = (
        f"{step} steps of {train.get('batch_size', '?')} images, Adam at learning rate "
        f"{train.get('lr', '?')} ({train.get('schedule', 'constant')} schedule), seed "
        f"{train.get('seed', '?')}, precision {train.get('precision', '?')}"
    )
    smoothing = train.get("label_smoothing")
    if type(smoothing) in (int, float) and smoothing > 0:
        training += f", label smoothing {smoothing:g}"
    if isinstance(seconds, (int, float)):
        training += f"; {seconds:.1f} s of training"
    training += "."

    per_class = []
    if test is not None and isinstance(test.get("per_class_accuracy"), list):
        per_class = [
            {"name": classes[i] if i < len(classes) else str(i), "accuracy": float(a)}
            for i, a in enumerate(test["per_class_accuracy"])
            if isinstance(a, (int, float))
        ]
    template = environment().get_template("card.md.j2")
    scorer = stored_scorer(folder)
    k, shift = (scorer.k, scorer.shift) if scorer else (K, SHIFT)
    digit_check = {
        "references": len(scorer.references) if scorer else None,
        "dims": int(scorer.references.shape[1]) if scorer else None,
        "neighbour": "nearest neighbour" if k == 1 else f"{_ordinal(k)} nearest neighbour",
        "shift": shift,
        "threshold": f"{scorer.threshold:.4f}" if scorer else None,
        "val_quantile": f"{100 * VAL_QUANTILE:g}%",
        "val_neighbour": _ordinal(k + VAL_SKIP) + " nearest neighbour",
    }
    return template.render(
        front_matter=Markup(_yaml(front)),
        name=name,
        network={"title": title, "description": description},
        dataset={
            "title": DATASET_TITLES.get(dataset, dataset),
            "item": DATASET_ITEMS.get(dataset, "image"),
        },  # fmt: skip
        classes=classes,
        parameters=sum(p.numel() for p in model.parameters()),
        test=test,
        per_class=per_class,
        step=step,
        curves=(folder / CURVES_FILE).is_file(),
        training=training,
        command=command,
        unflagged=unflagged,
        machine=machine,
        digit_check=digit_check,
    )


def write_card(run: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write RUN's model card atomically (default ``RUN/README.md``); returns its path."""
    path = Path(out) if out is not None else Path(run) / CARD_FILE
    atomic_write_bytes(path, build_card(run).encode("utf-8"))
    return path
