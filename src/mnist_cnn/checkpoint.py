"""Checkpoints as safetensors + JSON: loading one never executes code from it.

A run folder holds
- ``model.safetensors``: the latest weights, with the model config in the file's metadata,
  enough to rebuild the network from the file alone;
- ``checkpoint.safetensors``: weights, optimizer state and RNG state for ``--resume``, with the
  step and the whole training config in its metadata;
- ``config.json`` and ``metrics.jsonl``, written by training.
Every file is written to a temp file and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError, ConfigError
from .fileio import atomic_path
from .model import ModelConfig, build_model

FORMAT = "mnist-cnn"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views and shared storage; detach, move to CPU and copy.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    header = {"format": FORMAT, "version": str(FORMAT_VERSION), "meta": json.dumps(meta)}
    with atomic_path(path) as tmp:
        save_file(_contiguous(tensors), str(tmp), metadata=header)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: damaged or not a safetensors file ({err})") from None
    meta_raw = header.get("__metadata__") or {}
    if meta_raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mnist-cnn checkpoint (no mnist-cnn metadata)")
    if int(meta_raw.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer mnist-cnn (format {meta_raw['version']}); upgrade"
        )
    try:
        meta = json.loads(meta_raw["meta"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: damaged metadata") from None
    return tensors, meta


def model_file(run: str | os.PathLike[str]) -> Path:
    """The weights file for RUN: a run folder or a ``.safetensors`` file."""
    path = Path(run)
    if path.is_dir():
        path = path / MODEL_FILE
        if not path.is_file():
            raise CheckpointError(
                f"{run}: no {MODEL_FILE} in this folder; is it a run folder from 'mnist-cnn train'?"
            )
    elif not path.exists():
        raise CheckpointError(f"{run}: no such run folder or file")
    return path


# --------------------------------------------------------------------------- model weights


def save_model(path: str | os.PathLike[str], model: nn.Module, extra: dict | None = None) -> None:
    """Save weights plus the model config (and ``extra`` metadata) to a safetensors file."""
    meta = {"model": model.config.to_dict(), **(extra or {})}
    _write(Path(path), model.state_dict(), meta)


def _load_into(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        extra = sorted(set(found) - set(expected))
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if wrong:
            k = wrong[0]
            parts.append(f"{k} has shape {found[k]}, the network needs {expected[k]}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}")
        raise CheckpointError(
            f"{path}: weights do not fit the {model.config.arch} network ({'; '.join(parts)})"
        )
    model.load_state_dict(tensors)


def load_model(
    run: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved in RUN (folder or file) in eval mode; returns (model, metadata)."""
    path = model_file(run)
    tensors, meta = _read(path)
    try:
        config = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(
            f"{path}: model description missing or not understood ({err})"
        ) from None
    try:
        model = build_model(config)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None
    _load_into(model, {k: v.to(torch.float32) for k, v in tensors.items()}, path)
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------- training state


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(
    run_dir: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> None:
    """Write ``checkpoint.safetensors`` (weights, optimizer, RNG) and ``model.safetensors``."""
    run_dir = Path(run_dir)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    full_meta = {"model": model.config.to_dict(), "optimizer": opt_meta, **meta}
    _write(run_dir / CHECKPOINT_FILE, tensors, full_meta)
    save_model(run_dir / MODEL_FILE, model, {k: meta[k] for k in ("step",) if k in meta})


def load_training_state(
    run_dir: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG state from a run's checkpoint; returns its metadata."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {CHECKPOINT_FILE} to resume from")
    tensors, meta = _read(path)
    if meta.get("model") != model.config.to_dict():
        raise CheckpointError(f"{path}: saved for another network ({meta.get('model')})")
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_into(model, weights, path)
    opt = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    try:
        optimizer.load_state_dict(_unflatten_optimizer(opt, meta["optimizer"]))
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: optimizer state does not fit ({err})") from None
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [
        tensors[f"rng.cuda.{i}"]
        for i in range(torch.cuda.device_count())
        if f"rng.cuda.{i}" in tensors
    ]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return meta


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A run's ``config.json``."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir}: no {CONFIG_FILE}; is it a run folder?") from None
    except ValueError as err:
        raise CheckpointError(f"{path}: damaged ({err})") from None


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A run's ``metrics.jsonl`` as records (a torn last line of a live run is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {METRICS_FILE}; is it a run folder?")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return records
