"""Training: the seed's recipe by default, a run folder with checkpoints, exact resume.

Defaults are the seed's: Adam with learning rate 1e-4, batch 50, 10,000 steps, dropout 0.5.
The data order is a function of (seed, epoch) alone, and the dropout RNG state travels in every
checkpoint, so a run resumed from its last checkpoint ends with the same weights as one that
never stopped (bit for bit on the same CPU).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, distributed, tblog
from .batches import BatchSource
from .checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    load_training_state,
    read_run_config,
    save_training_state,
)
from .datasets import MNISTLike, load_dataset
from .device import device_description, synchronize
from .errors import CheckpointError, ConfigError, MnistCnnError
from .evaluate import EvalResult
from .fileio import atomic_write_json
from .model import ModelConfig, build_model, count_parameters
from .step import (
    PRECISIONS,
    SCHEDULES,
    StepPlan,
    build_step,
    lr_schedule,
    make_optimizer,
    prepare_model,
    resolve_plan,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; written to the run's ``config.json``."""

    preset: str = "seed"
    dataset: str = "mnist"
    data_dir: str | None = None
    steps: int = 10_000
    batch_size: int = 50
    lr: float = 1e-4
    seed: int | None = None  # None: a random seed, chosen and recorded at the start
    device: str = "auto"
    log_every: int = 1000
    checkpoint_every: int = 1000
    eval_batch_size: int = 100
    full_train: bool = False  # train on all 60,000 (validation is then not held out)
    tensorboard: bool = False  # also log to <run>/tensorboard (needs the tensorboard extra)
    fast: bool = True  # the fast step (step.py): same recipe, less overhead; False: plain eager
    precision: str = "auto"  # auto: bf16 autocast where the device computes it natively, else fp32
    schedule: str = "constant"  # learning rate: constant, or onecycle (warm-up, cosine down)
    shift: int = 0  # augmentation: move each training image by up to ±shift pixels
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0:
            raise ConfigError("lr must be positive")
        if not 0 <= self.model.dropout < 1:
            raise ConfigError("dropout must lie in [0, 1)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if not 0 <= self.shift <= 4:
            raise ConfigError("shift must lie in 0..4 pixels")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        model = ModelConfig.from_dict(data.pop("model", {}))
        return cls(model=model, **data)


# 16/32 channels: on the validation split, two epochs of this beat one epoch of 32/64 channels
# (99.26% vs 99.20%) at three quarters of the arithmetic. See docs/speed.md.
FAST_MODEL = ModelConfig(
    arch="fast-cnn", conv1_channels=16, conv2_channels=32, kernel_size=3, hidden=128, dropout=0.0
)

PRESETS: dict[str, TrainConfig] = {
    "seed": TrainConfig(),
    # Designed for a whole command in well under 30 s on two CPU cores; see docs/speed.md.
    "fast": TrainConfig(
        preset="fast",
        steps=860,  # two epochs of the 55,000 training images
        batch_size=128,
        lr=1e-2,  # the peak of the one-cycle schedule
        schedule="onecycle",
        shift=1,
        log_every=10_000,
        checkpoint_every=10_000,
        eval_batch_size=1000,
        model=FAST_MODEL,
    ),
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """A preset's config with some settings replaced (None values are ignored)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "dropout" in changes:
        changes["model"] = dataclasses.replace(base.model, dropout=changes.pop("dropout"))
    return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class TrainResult:
    """Where the run lives and how it ended."""

    run_dir: Path
    config: TrainConfig
    steps: int
    seconds: float  # training time, excluding data loading and the final test evaluation
    test: EvalResult


class TrainingInterrupted(MnistCnnError):
    """Ctrl-C: a checkpoint was written; the run can be resumed."""


def plan_for(config: TrainConfig, device: torch.device, *, distributed: bool = False) -> StepPlan:
    """The step plan of a run: checked before anything is written."""
    return resolve_plan(
        device,
        config.precision,
        plain=not config.fast,
        # A CUDA graph cannot hold DDP's collectives, nor see a learning-rate schedule.
        graph=not distributed and config.schedule == "constant",
    )


def _announce(
    on_log: Callable[[dict[str, Any]], None] | None, plan: StepPlan
) -> Callable[[dict[str, Any]], None] | None:
    """``on_log`` whose first record also carries the plan's summary, for the first log line."""
    if on_log is None:
        return None
    told = [False]

    def first_with_plan(rec: dict[str, Any]) -> None:
        if not told[0]:
            told[0] = True
            rec = {**rec, "plan": plan.summary()}
        on_log(rec)

    return first_with_plan


def default_run_dir() -> Path:
    """``runs/<timestamp>`` in the current folder."""
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def environment_info(device: torch.device) -> dict[str, Any]:
    """Library versions, hardware and source revision: the run's provenance."""
    info: dict[str, Any] = {
        "mnist_cnn": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_description(device),
    }
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if rev.returncode == 0:
            info["git_revision"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


class _StopFlag:
    """Turns Ctrl-C into a flag checked between steps, so a checkpoint is never half a step."""

    def __init__(self) -> None:
        self.set = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    data: MNISTLike | None = None,
) -> TrainResult:
    """Train a new run into ``out_dir`` (default ``runs/<timestamp>``); returns its result.

    ``on_log`` receives each metrics record (also appended to ``metrics.jsonl``). ``data`` lets
    a caller pass a dataset already in memory.
    """
    par = distributed.current()
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir()
    run_dir = Path(par.broadcast_text(str(run_dir)))  # rank 0's choice (timestamps may differ)
    taken = (run_dir / CHECKPOINT_FILE).exists() or (run_dir / CONFIG_FILE).exists()
    if par.broadcast_int(int(taken)):  # rank 0 looks before it writes, the others follow
        raise ConfigError(
            f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
            "or choose another --out"
        )
    if config.seed is None:
        seed = par.broadcast_int(random.SystemRandom().randrange(2**31))
        config = dataclasses.replace(config, seed=seed)
    return _run(config, run_dir, resume=False, on_log=on_log, progress=progress, data=data)


def resume(
    run_dir: str | Path,
    *,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    data: MNISTLike | None = None,
) -> TrainResult:
    """Continue a run from its last checkpoint, with the settings it was started with."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    try:
        config = TrainConfig.from_dict(saved["train"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{run_dir}/{CONFIG_FILE}: not understood ({err})") from None
    return _run(config, run_dir, resume=True, on_log=on_log, progress=progress, data=data)


def _run(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    on_log: Callable[[dict[str, Any]], None] | None,
    progress: bool,
    data: MNISTLike | None,
) -> TrainResult:
    assert config.seed is not None  # set by train(); resume() reads it back
    par = distributed.current()  # rank and process count under torchrun; else one process
    par.check_batch(config.batch_size)
    if config.tensorboard:
        tblog.require_tensorboard()  # before anything is written
    device = par.device(config.device)
    plan = plan_for(config, device, distributed=par.is_distributed)  # refused before any write
    on_log = _announce(on_log, plan)
    if data is None:
        data = load_dataset(config.dataset, config.data_dir, full_train=config.full_train)
    n_train = len(data.train)
    if n_train < config.batch_size:
        raise ConfigError(f"batch size {config.batch_size} exceeds the {n_train} training images")

    torch.manual_seed(config.seed)
    model = prepare_model(build_model(config.model), plan)
    optimizer = make_optimizer(model.parameters(), config.lr, plan)
    start_step = 0
    if resume:
        meta = load_training_state(run_dir, model, optimizer)
        start_step = int(meta["step"])
        log.info("resuming %s at step %d", run_dir, start_step)
    elif par.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            run_dir / CONFIG_FILE,
            {
                "train": config.to_dict(),
                "parameters": count_parameters(model),
                "dataset": {
                    "name": data.name,
                    "train": n_train,
                    "val": len(data.val),
                    "test": len(data.test),
                },
                "environment": environment_info(device),
                "plan": plan.to_dict(),
                "distributed": par.describe(),
            },
        )
        (run_dir / METRICS_FILE).unlink(missing_ok=True)

    # The whole training split lives on the device as uint8 (43 MB); batches are gathered there.
    train_x = data.train.images.to(device)
    train_y = data.train.labels.to(device)
    step_fn = build_step(
        par.wrap(model, device),
        optimizer,
        plan,
        lr=lr_schedule(config.schedule, config.steps, config.lr),
        start_step=start_step,
    )
    batches = BatchSource(
        train_x,
        train_y,
        seed=config.seed,
        batch_size=config.batch_size,
        shift=config.shift,
        channels_last=plan.channels_last,
    )
    metrics_path = run_dir / METRICS_FILE
    # The first validation digit's conv1 maps are drawn at every log step.
    board = tblog.open_log(
        config.tensorboard,
        run_dir,
        data.val.images[0],
        config.batch_size,
        start_step,
        write=par.is_main,
    )

    def checkpoint(step: int) -> None:
        if par.is_main:
            save_training_state(run_dir, model, optimizer, {"step": step, "seed": config.seed})

    def record(
        step: int, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor, n: int, elapsed: float
    ) -> None:
        # The seed's training accuracy: the current batch, dropout off.
        model.eval()
        with torch.inference_mode():
            train_acc = par.average((model(x).argmax(1) == y).float().mean()).item()
        model.train()
        val = par.evaluate(
            model,
            data.val.images,
            data.val.labels,
            batch_size=config.eval_batch_size,
            device=device,
            measure_memory=False,
        )
        rec = {
            "step": step,
            "loss": par.average(loss_sum).item() / n if n else None,
            "train_accuracy": train_acc,
            "val_accuracy": val.accuracy,
            "seconds": round(elapsed, 3),
        }
        if not par.is_main:
            return
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if on_log is not None:
            on_log(rec)
        if board is not None:
            board.log(rec, model, optimizer)

    bar = None
    if progress and par.is_main:
        from tqdm import tqdm

        bar = tqdm(
            total=config.steps, initial=start_step, unit="step", dynamic_ncols=True, leave=False
        )

    model.train()
    loss_sum = torch.zeros((), device=device)
    n_losses = 0
    # Time already spent before an interruption is carried over, so "seconds" keeps counting.
    elapsed_before = 0.0
    if resume and par.is_main and metrics_path.is_file():
        lines = [ln for ln in metrics_path.read_text().splitlines() if ln.strip()]
        kept = []
        for ln in lines:
            try:
                rec = json.loads(ln)
            except ValueError:
                continue
            if rec["step"] < start_step or (rec["step"] == start_step and start_step == 0):
                kept.append(ln)
                elapsed_before = rec["seconds"]
        # Drop records logged after the checkpoint: they are logged again as the run replays.
        metrics_path.write_text("".join(ln + "\n" for ln in kept))
    synchronize(device)
    t0 = time.perf_counter() - elapsed_before
    step = start_step
    x = y = None
    with _StopFlag() as stop:
        while step < config.steps:
            x, y = batches(step)
            x, y = par.shard(x), par.shard(y)  # this process's share of the global batch
            if step % config.log_every == 0:
                record(step, x, y, loss_sum, n_losses, time.perf_counter() - t0)
                loss_sum.zero_()
                n_losses = 0
            par.seed_step(config.seed, step)
            loss_sum += step_fn(x, y)
            n_losses += 1
            step += 1
            if bar is not None:
                bar.update(1)
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint(step)
            if stop.set:
                checkpoint(step)
                if bar is not None:
                    bar.close()
                raise TrainingInterrupted(
                    f"interrupted at step {step}; checkpoint saved: continue with "
                    f"'mnist-cnn train --resume {run_dir}'"
                )
    synchronize(device)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if x is not None and n_losses:  # the end, whether or not it falls on a log step
        record(step, x, y, loss_sum, n_losses, seconds)
    if board is not None:
        board.close()

    test = par.evaluate(
        model, data.test.images, data.test.labels, batch_size=config.eval_batch_size, device=device
    )
    if par.is_main:
        atomic_write_json(
            run_dir / RESULTS_FILE,
            {"step": step, "train_seconds": seconds, "test": test.to_dict()},
        )
        from .card import write_card
        from .inspect import save_training_curves  # matplotlib is imported only when needed

        save_training_curves(run_dir)  # <run>/curves.png: loss and accuracy against step
        write_card(run_dir)  # <run>/README.md: the model card
    return TrainResult(run_dir=run_dir, config=config, steps=step, seconds=seconds, test=test)
