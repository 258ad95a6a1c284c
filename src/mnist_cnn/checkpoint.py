"""Checkpoints as safetensors + JSON: loading one never executes code from it.

A run folder holds
- ``model.safetensors``: the latest weights, with the model config in the file's metadata,
  enough to rebuild the network from the file alone;
- ``checkpoint.safetensors``: weights, optimizer state and RNG state for ``--resume``, with the
  step and the whole training config in its metadata;
and the rest of the folder (config, metrics, results, lock) is rundir.py's.
Every file is written to a temp file and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .adam import FusedAdam, Optimizer
from .datasets import NUM_CLASSES
from .errors import CheckpointError, ConfigError
from .fileio import atomic_path, storage_error
from .model import ARCHITECTURES, ModelConfig, build_model

FORMAT = "mnist-cnn"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views and shared storage; detach, move to CPU and copy.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    header = {"format": FORMAT, "version": str(FORMAT_VERSION), "meta": json.dumps(meta)}
    try:
        with atomic_path(path) as tmp:  # on failure the temp file is removed, `path` untouched
            save_file(_contiguous(tensors), str(tmp), metadata=header)
    except SafetensorError as err:  # the writer's I/O errors (a full disk) come as this
        raise storage_error(path, err) from None


# A checkpoint's JSON header holds tensor names, shapes and a few KiB of settings; safetensors
# admits 100 MB. Anything far larger is not ours, and is refused before it is read.
MAX_HEADER_BYTES = 1024 * 1024
# Float weights may be stored at any of these precisions (they are loaded as float32).
_FLOAT_DTYPES = frozenset({"F32", "F16", "BF16"})
_DTYPE_NAMES = {torch.float32: "F32", torch.int64: "I64"}


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: errors quote files, never echo them whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cut(text: str, limit: int = 160) -> str:
    """A message from a library, on one line and at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


TensorInfo = dict[str, tuple[str, tuple[int, ...]]]  # name -> (safetensors dtype, shape)


def _read_header(path: Path) -> tuple[TensorInfo, dict[str, Any]]:
    """The tensors a safetensors file declares and its mnist-cnn metadata, read and checked
    without loading any tensor (the header is bounded by ``MAX_HEADER_BYTES``)."""
    if not path.is_file():
        what = "no such file" if not path.exists() else "not a regular file"
        raise CheckpointError(f"{path}: {what}")
    damaged = f"{path}: damaged or not a safetensors file"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{damaged} ({size} bytes)")
            header_len = int.from_bytes(prefix, "little")
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise CheckpointError(
                    f"{damaged} (its header claims {header_len:,} bytes; the file has {size:,}, "
                    f"and an mnist-cnn header is under {MAX_HEADER_BYTES:,})"
                )
            header = json.loads(fh.read(header_len))
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, nested too deep
        raise CheckpointError(f"{damaged} ({_cut(str(err))})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{damaged} (header is not a JSON object)")
    meta_raw = header.pop("__metadata__", None) or {}
    if not isinstance(meta_raw, dict) or meta_raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mnist-cnn checkpoint (no mnist-cnn metadata)")
    version = meta_raw.get("version", "0")
    if not (isinstance(version, str) and version.isdigit() and len(version) < 6):
        raise CheckpointError(f"{path}: damaged metadata (format version {_short(version)})")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer mnist-cnn (format {version}); upgrade")
    try:
        meta = json.loads(meta_raw["meta"])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: damaged metadata") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: damaged metadata (not a JSON object)")
    info: TensorInfo = {}
    for name, entry in header.items():
        try:
            dtype, shape = entry["dtype"], entry["shape"]
            if not isinstance(dtype, str) or not all(
                type(d) is int and 0 <= d < 2**40 for d in shape
            ):
                raise TypeError
        except (KeyError, TypeError):
            raise CheckpointError(f"{damaged} (tensor {_short(name)})") from None
        info[name] = (dtype, tuple(shape))
    return info, meta


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: damaged or not a safetensors file ({_cut(str(err))})"
        ) from None


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Header and metadata (checked), then the tensors."""
    _, meta = _read_header(path)
    return _load_tensors(path), meta


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


def _fit_problems(expected: TensorInfo, found: TensorInfo) -> str:
    """What keeps tensors ``found`` from fitting a network that needs ``expected`` ('' if
    nothing); dtypes are compared as float or not, since weights may be stored in 16 bits."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k][1] != found[k][1])
    kinds = sorted(
        k
        for k in set(expected) & set(found)
        if (expected[k][0] == "F32") != (found[k][0] in _FLOAT_DTYPES)
        or (expected[k][0] != "F32" and found[k][0] != expected[k][0])
    )
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:3])}")
    if wrong:
        k = wrong[0]
        parts.append(f"{k} has shape {found[k][1]}, the network needs {expected[k][1]}")
    if kinds:
        k = kinds[0]
        parts.append(f"{k} is {_short(found[k][0], 12)}, the network needs {expected[k][0]}")
    if extra:
        parts.append(f"unexpected {', '.join(_short(k, 40) for k in extra[:3])}")
    return "; ".join(parts)


def _info(tensors: dict[str, torch.Tensor]) -> TensorInfo:
    return {
        k: (_DTYPE_NAMES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, v in tensors.items()
    }


def expected_tensors(config: ModelConfig) -> TensorInfo:
    """The tensors (dtype, shape) of the network ``config`` describes, computed on PyTorch's
    meta device: nothing is allocated, however large the config claims to be."""
    with torch.device("meta"):
        model = build_model(config)
    return _info(model.state_dict())


def _load_into(
    model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, assign: bool = False
) -> None:
    """Copy ``tensors`` into ``model`` (``assign``: make them its tensors, as a network built
    on the meta device needs)."""
    problems = _fit_problems(_info(model.state_dict()), _info(tensors))
    if problems:
        raise CheckpointError(
            f"{path}: weights do not fit the {model.config.arch} network ({problems})"
        )
    model.load_state_dict(tensors, assign=assign)


def model_config_from_meta(meta: dict[str, Any], path: str | os.PathLike[str]) -> ModelConfig:
    """The network a file's metadata describes, every field checked (type, range, known arch)."""
    try:
        config = ModelConfig.from_dict(meta["model"])
    except KeyError:
        raise CheckpointError(f"{path}: model description missing") from None
    except (TypeError, ConfigError) as err:
        raise CheckpointError(
            f"{path}: model description not understood ({_cut(str(err))})"
        ) from None
    if config.arch not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise CheckpointError(
            f"{path}: unknown architecture {_short(config.arch, 40)} (this version knows {known})"
        )
    if config.num_classes != NUM_CLASSES:
        raise CheckpointError(
            f"{path}: a network for {config.num_classes} classes; every dataset here has "
            f"{NUM_CLASSES}"
        )
    return config


def _check_model_meta(meta: dict[str, Any], path: Path) -> ModelConfig:
    config = model_config_from_meta(meta, path)
    step = meta.get("step")
    if step is not None and not (type(step) is int and 0 <= step < 2**53):
        raise CheckpointError(f"{path}: step must be a whole number >= 0, got {_short(step)}")
    dataset = meta.get("dataset")
    if dataset is not None and not (isinstance(dataset, str) and 0 < len(dataset) <= 64):
        raise CheckpointError(f"{path}: dataset must be a short name, got {_short(dataset)}")
    classes = meta.get("classes")
    if classes is not None and not (
        isinstance(classes, list)
        and len(classes) == config.num_classes
        and all(isinstance(c, str) and 0 < len(c) <= 64 for c in classes)
    ):
        raise CheckpointError(
            f"{path}: classes must be {config.num_classes} short names, got {_short(classes)}"
        )
    return config


def load_model(
    run: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved in RUN (folder or file) in eval mode; returns (model, metadata).

    The metadata is checked field by field, and the tensors the header declares against the
    network it describes, before any tensor is read or any layer built.
    """
    path = model_file(run)
    info, meta = _read_header(path)
    config = _check_model_meta(meta, path)
    problems = _fit_problems(expected_tensors(config), info)
    if problems:
        raise CheckpointError(f"{path}: weights do not fit the {config.arch} network ({problems})")
    tensors = _load_tensors(path)
    # Built on the meta device: no memory and no random initialisation for weights that the
    # file's replace (a load of the seed network: 185 ms -> 12-17 ms on a 2-core Xeon).
    with torch.device("meta"):
        model = build_model(config)
    # Weights stored in 16 bits are widened; integer buffers (batch-norm counters) stay as they are.
    _load_into(
        model,
        {k: _owned(v.float() if v.is_floating_point() else v) for k, v in tensors.items()},
        path,
        assign=True,
    )
    require_finite(model.state_dict(), path)
    return model.to(device).eval(), meta


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in memory of its own: a model keeps what it is assigned, and a view into a
    shared (or file-mapped) buffer would keep all of that alive as long as the model lives."""
    storage = tensor.untyped_storage()
    if storage.nbytes() == tensor.nbytes and storage.filename is None:
        return tensor
    return tensor.clone()


def require_finite(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Refuse weights holding NaN or infinity (a diverged run): they answer nothing useful."""
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{path}: {name[:60]} holds NaN or infinite values (training diverged); "
                "this network cannot be used"
            )


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
    optimizer: Optimizer,
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
    extra = {k: meta[k] for k in ("step", "dataset", "classes") if k in meta}
    save_model(run_dir / MODEL_FILE, model, extra)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _same_kind(saved: Any, current: Any) -> bool:
    """Whether an optimizer setting read from a file has the type and sign of the live one."""
    if isinstance(current, bool) or current is None:
        return saved is None or isinstance(saved, bool)
    if isinstance(current, (int, float)):
        return type(saved) in (int, float) and math.isfinite(saved) and saved >= 0
    if isinstance(current, (list, tuple)):
        return (
            isinstance(saved, list)
            and len(saved) == len(current)
            and all(_same_kind(a, b) for a, b in zip(saved, current, strict=True))
        )
    return type(saved) is type(current)


def _check_hyperparameters(group: dict, live: dict, bad: str) -> None:
    """Adam's settings within the ranges its update is defined on (a beta of 1 divides by 0),
    and the run's own: the live optimizer was built from the run's config, which a resume
    cannot change. The learning rate may be lower than the live one (a schedule lowers it
    from its peak), never higher: a learning rate of 1e37 read from a damaged file is finite
    and positive, and the first step after the resume filled every weight with infinities."""

    def number(value: Any) -> bool:
        return type(value) in (int, float) and math.isfinite(value)

    def plain(value: Any) -> Any:
        return tuple(value) if isinstance(value, list | tuple) else value

    checks = {
        "lr": lambda v: number(v) and v > 0,
        "eps": lambda v: number(v) and v >= 0,
        "weight_decay": lambda v: number(v) and v >= 0,
        "betas": lambda v: (
            isinstance(v, list | tuple) and len(v) == 2 and all(number(b) and 0 <= b < 1 for b in v)
        ),
    }
    for key, ok in checks.items():
        if key in group and not ok(group[key]):
            raise CheckpointError(f"{bad} ({key} {_short(group[key])})")
    if "lr" in group and group["lr"] > float(live["lr"]) * (1 + 1e-9):
        raise CheckpointError(f"{bad} (lr {_short(group['lr'])}: above the run's {live['lr']:g})")
    for key in ("betas", "eps", "weight_decay"):
        if key in group and plain(group[key]) != plain(live[key]):  # JSON made betas a list
            raise CheckpointError(
                f"{bad} ({key} {_short(group[key])}: the run's is {_short(live[key])})"
            )


def _check_optimizer(
    tensors: dict[str, torch.Tensor], meta: Any, optimizer: Optimizer, path: Path
) -> dict:
    """The saved optimizer state, checked against the live optimizer before it is loaded."""
    bad = f"{path}: optimizer state does not fit"
    live = optimizer.state_dict()
    groups = meta.get("param_groups") if isinstance(meta, dict) else None
    scalars = meta.get("scalars", {}) if isinstance(meta, dict) else None
    if not isinstance(groups, list) or len(groups) != len(live["param_groups"]):
        raise CheckpointError(f"{bad} (param_groups {_short(groups)})")
    for saved, current in zip(groups, live["param_groups"], strict=True):
        if not isinstance(saved, dict) or set(saved) != set(current):
            raise CheckpointError(f"{bad} (a param group {_short(saved)})")
        for key, value in current.items():
            if key == "params" and saved[key] != value:
                raise CheckpointError(f"{bad} (params {_short(saved[key])})")
            if key != "params" and not _same_kind(saved[key], value):
                raise CheckpointError(f"{bad} ({key} {_short(saved[key])})")
        _check_hyperparameters(saved, current, bad)
    # How the update is computed (fused, foreach, capturable, amsgrad ...) belongs to the
    # optimizer this process built for its device, not to the file: a flag from the file
    # (null where the kernel wants a bool, or capturable from a GPU run) would reach the kernel.
    meta = dict(meta)
    meta["param_groups"] = [
        {
            k: live_v if isinstance(live_v, bool) or live_v is None else saved[k]
            for k, live_v in current.items()
        }
        for saved, current in zip(groups, live["param_groups"], strict=True)
    ]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    shapes = dict(enumerate(tuple(p.shape) for p in params))
    if not isinstance(scalars, dict) or not all(
        isinstance(k, str)
        and k.isdigit()
        and int(k) in shapes
        and isinstance(v, dict)
        and all(_same_kind(x, 0.0) for x in v.values())
        for k, v in scalars.items()
    ):
        raise CheckpointError(f"{bad} (scalars {_short(scalars)})")
    for name, value in tensors.items():
        parts = name.split(".", 2)
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) not in shapes:
            raise CheckpointError(f"{bad} (tensor {_short(name)})")
        want = () if parts[2] == "step" else shapes[int(parts[1])]
        if tuple(value.shape) != want or not value.is_floating_point():
            raise CheckpointError(f"{bad} ({name[:60]} has shape {tuple(value.shape)})")
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{bad} ({name[:60]} holds NaN or infinite values)")
        if parts[2] in ("step", "exp_avg_sq", "max_exp_avg_sq") and bool((value < 0).any()):
            raise CheckpointError(f"{bad} ({name[:60]} holds negative values)")
    state = _unflatten_optimizer(tensors, meta)
    # Adam keeps the same entries for every parameter, or none before its first step.
    keys = {"step", "exp_avg", "exp_avg_sq"}
    if any(g.get("amsgrad") for g in live["param_groups"]):
        keys.add("max_exp_avg_sq")
    complete = set(state["state"]) == set(shapes) and all(
        set(v) == keys for v in state["state"].values()
    )
    if state["state"] and isinstance(optimizer, (torch.optim.Adam, FusedAdam)) and not complete:
        raise CheckpointError(f"{bad} (Adam state incomplete)")
    return state


def load_training_state(
    run_dir: str | os.PathLike[str], model: nn.Module, optimizer: Optimizer
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG state from a run's checkpoint; returns its metadata.

    Everything is checked (shapes, types, finite values) before any of it is loaded.
    """
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {CHECKPOINT_FILE} to resume from")
    tensors, meta = _read(path)
    if not isinstance(meta, dict) or meta.get("model") != model.config.to_dict():
        found = meta.get("model") if isinstance(meta, dict) else meta
        raise CheckpointError(f"{path}: saved for another network ({_short(found, 160)})")
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    require_finite(weights, path)
    rng = tensors.get("rng.torch")
    live_rng = torch.get_rng_state()
    if rng is None or rng.dtype != live_rng.dtype or rng.shape != live_rng.shape:
        raise CheckpointError(f"{path}: no usable random-number state (rng.torch)")
    opt = _check_optimizer(
        {k: v for k, v in tensors.items() if k.startswith("optim.")},
        meta.get("optimizer"),
        optimizer,
        path,
    )
    _load_into(model, weights, path)
    try:
        optimizer.load_state_dict(opt)
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(
            f"{path}: optimizer state does not fit ({_short(err, 120)})"
        ) from None
    torch.set_rng_state(rng)
    cuda_states = [
        tensors[f"rng.cuda.{i}"]
        for i in range(torch.cuda.device_count())
        if f"rng.cuda.{i}" in tensors
    ]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return meta
