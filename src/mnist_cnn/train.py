"""Training: the seed's recipe by default, a run folder with checkpoints, exact resume.

Defaults are the seed's: Adam with learning rate 1e-4, batch 50, 10,000 steps, dropout 0.5.
The data order is a function of (seed, epoch) alone, and the dropout RNG state travels in every
checkpoint, so a run resumed from its last checkpoint ends with the same weights as one that
never stopped (bit for bit on the same CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import platform
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__, distributed, tblog
from .adam import Optimizer
from .batches import BatchSource
from .checkpoint import CHECKPOINT_FILE, load_training_state, save_training_state
from .datasets import VALIDATION_SIZE, MNISTLike, load_dataset
from .device import device_description, synchronize
from .errors import CheckpointError, ConfigError, MnistCnnError
from .evaluate import EvalResult
from .model import FAST_CNN, ModelConfig, build_model, count_parameters
from .rundir import CONFIG_FILE, CURVES_FILE, MAX_SEED, RunDir, RunState, short
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


MAX_SHIFT = 4  # pixels of augmentation shift; a digit is about 20 px wide in its 28x28 frame


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
    label_smoothing: float = 0.0  # of the loss's targets (model.loss_fn); the fast preset: 0.1
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        _check_types(self)  # settings also come from config.json: types first, then ranges
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "eval_batch_size"):
            if not 1 <= getattr(self, name) <= MAX_COUNT:
                raise ConfigError(f"{name.replace('_', '-')} must lie in 1..{MAX_COUNT:,}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive finite number, got {short(self.lr)}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must lie in 0..{MAX_SEED} (2^32 - 1), got {short(self.seed)}")
        if not 0 <= self.model.dropout < 1:
            raise ConfigError("dropout must lie in [0, 1)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if not 0 <= self.shift <= MAX_SHIFT:
            raise ConfigError(f"shift must lie in 0..{MAX_SHIFT} pixels")
        if not 0 <= self.label_smoothing < 1:  # NaN fails both comparisons
            raise ConfigError(
                f"label smoothing must lie in [0, 1), got {short(self.label_smoothing)}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"training settings must be a JSON object, got {short(data)}")
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            names = ", ".join(short(k, 40) for k in sorted(unknown)[:5])
            raise ConfigError(f"unknown training setting(s): {names}")
        model = data.pop("model", {})
        if not isinstance(model, dict):
            raise ConfigError(f"model settings must be a JSON object, got {short(model)}")
        try:
            return cls(model=ModelConfig.from_dict(model), **data)
        except TypeError as err:  # a setting of the wrong type reached a comparison
            raise ConfigError(f"a setting has the wrong type ({short(str(err), 100)})") from None


MAX_COUNT = 2**31 - 1  # steps, batch sizes, intervals: far beyond any run, inside every int


def _check_types(config: TrainConfig) -> None:
    """Each setting has its annotated type (bool is not a number here; ints pass as floats)."""
    kinds: dict[str, tuple[type, ...]] = {
        "int": (int,),
        "float": (int, float),
        "str": (str,),
        "bool": (bool,),
    }
    for f in dataclasses.fields(config):
        if f.name == "model":
            continue
        value = getattr(config, f.name)
        names = [t.strip() for t in str(f.type).split("|")]
        if value is None and "None" in names:
            continue
        allowed = kinds[names[0]]
        if type(value) not in allowed:
            raise ConfigError(
                f"setting {f.name} must be {names[0]}"
                + (" or null" if "None" in names else "")
                + f", got {short(value)}"
            )


PRESETS: dict[str, TrainConfig] = {
    "seed": TrainConfig(),
    # Designed for a whole command in well under 30 s on two CPU cores; see docs/speed.md.
    "fast": TrainConfig(
        preset="fast",
        steps=860,  # two epochs of the 55,000 training images
        # Batch 64 validated 0.1% better in the earlier recipe, but not in this one (0.9939 both,
        # two stages; docs/speed.md), and its steps cost more.
        batch_size=128,
        lr=2e-2,  # the peak of the one-cycle schedule
        schedule="onecycle",
        shift=1,
        # With lr 2e-2: +0.15% on validation over none (and 1e-2), at no cost (docs/speed.md).
        label_smoothing=0.1,
        log_every=10_000,
        checkpoint_every=10_000,
        # Half the time of batch 1,000 on two CPU cores: 250 images' activations stay in the
        # caches (10,000 test digits: 0.5 s against 1.0 s; docs/speed.md).
        eval_batch_size=250,
        model=FAST_CNN,
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
        distributed=distributed,
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
    curves: bool = True,
) -> TrainResult:
    """Train a new run into ``out_dir`` (default ``runs/<timestamp>``); returns its result.

    ``on_log`` receives each metrics record (also appended to ``metrics.jsonl``). ``data`` lets
    a caller pass a dataset already in memory. ``curves=False`` leaves out ``curves.png`` (a
    quarter of a second of drawing: it counts for many short runs, as in a sweep or a test
    suite); ``mnist_cnn.inspect.save_training_curves(run)`` draws it later.
    """
    par = distributed.current()
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir()
    run = RunDir(par.broadcast_text(str(run_dir)))  # rank 0's choice (timestamps may differ)
    if config.seed is None:
        seed = par.broadcast_int(random.SystemRandom().randrange(2**31))
        config = dataclasses.replace(config, seed=seed)
    _on_main(par, lambda: _require_new(run))  # before the lock file is made in a foreign folder
    device, plan = _preflight(config, par)  # a refused setting leaves no folder behind
    with _locked(run, par):
        _on_main(par, lambda: _require_new(run))  # again, now that no one else can start it
        return _run(
            config,
            run,
            device,
            plan,
            saved=None,
            on_log=on_log,
            progress=progress,
            data=data,
            curves=curves,
        )


def resume(
    run_dir: str | Path,
    *,
    steps: int | None = None,
    data_dir: str | Path | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    data: MNISTLike | None = None,
    curves: bool = True,
) -> TrainResult:
    """Continue a run from its last checkpoint, with the settings it was started with.

    ``steps`` larger than the run's extends it (a finished run too); ``data_dir`` points at its
    data when they moved. A run killed before its first checkpoint starts again at step 0.
    ``curves`` as for :func:`train`.
    """
    par = distributed.current()
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    _, config = _resume_config(run, steps, data_dir)  # a finished run is refused before locking
    device, plan = _preflight(config, par)
    with _locked(run, par):
        saved, config = _resume_config(run, steps, data_dir)
        return _run(
            config,
            run,
            device,
            plan,
            saved=saved,
            on_log=on_log,
            progress=progress,
            data=data,
            curves=curves,
        )


def _preflight(config: TrainConfig, par: distributed.Parallel) -> tuple[torch.device, StepPlan]:
    """Everything that can refuse a run's settings, checked before the run folder is touched."""
    par.check_batch(config.batch_size)
    if config.tensorboard:
        tblog.require_tensorboard()
    device = par.device(config.device)
    return device, plan_for(config, device, distributed=par.is_distributed)


class TrainingDiverged(MnistCnnError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""


class RunFinished(MnistCnnError):
    """``--resume`` on a run that has reached its steps: nothing is changed."""


def _require_new(run: RunDir) -> None:
    state = run.state()
    if state is RunState.FOREIGN:
        raise ConfigError(run.foreign_message())
    if state is not RunState.NEW:
        raise ConfigError(
            f"{run} already holds a run: continue it with --resume {run}, or choose another --out"
        )


def _resume_config(
    run: RunDir, steps: int | None, data_dir: str | Path | None
) -> tuple[dict[str, Any], TrainConfig]:
    """The run's config.json and the settings to continue with (``steps``/``data_dir`` applied)."""
    state = run.state()
    if state is RunState.NEW:
        raise CheckpointError(f"{run}: no run to resume here; start one with --out {run}")
    if state is RunState.FOREIGN:
        raise ConfigError(run.foreign_message())
    saved = run.read_config()
    try:
        config = TrainConfig.from_dict(saved["train"])
    except ConfigError as err:
        raise CheckpointError(f"{run.file(CONFIG_FILE)}: {err}") from None
    if config.seed is None:
        raise CheckpointError(f"{run.file(CONFIG_FILE)}: no seed recorded")
    done = config.steps
    if state is RunState.FINISHED and (steps is None or steps <= done):
        results = run.read_results() or {}
        acc = results.get("test", {}).get("accuracy", 0.0)
        raise RunFinished(
            f"{run} is finished ({done} steps, test accuracy {acc:.4f}); nothing changed. To train "
            f"it further: mnist-cnn train --resume {run} --steps N, with N > {done}"
        )
    if steps is not None and steps != config.steps:
        if config.schedule != "constant":
            raise ConfigError(
                f"--steps cannot change a run on the {config.schedule} schedule: its learning "
                f"rate is planned over its {config.steps} steps"
            )
        config = dataclasses.replace(config, steps=steps)
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=str(data_dir))
    return saved, config


@contextlib.contextmanager
def _locked(run: RunDir, par: distributed.Parallel) -> Iterator[None]:
    """Rank 0 holds the run folder's lock (and clears a killed writer's temp files)."""
    with contextlib.ExitStack() as stack:

        def take() -> None:
            stack.enter_context(run.lock())
            run.remove_stale_temp_files()

        _on_main(par, take)
        yield


def _on_main(par: distributed.Parallel, fn: Callable[[], None]) -> None:
    """Run ``fn`` on rank 0; an error there stops every process with the same line."""
    error: MnistCnnError | None = None
    if par.is_main:
        try:
            fn()
        except MnistCnnError as err:
            error = err
    text = par.broadcast_text(str(error) if error is not None else "")
    if error is not None:
        raise error
    if text:
        raise ConfigError(text)


@dataclass(frozen=True)
class Tally:
    """Where training stands; saved in every checkpoint, so a resumed run adds up the same."""

    step: int = 0
    seconds: float = 0.0  # training time so far, across resumes
    loss_sum: float = 0.0  # losses since the last log record (averaged over processes)
    loss_count: int = 0

    @classmethod
    def from_meta(cls, meta: dict[str, Any], path: Path, config: TrainConfig) -> Tally:
        step, seed = meta.get("step"), meta.get("seed")
        if type(step) is not int or not 0 <= step <= config.steps:
            raise CheckpointError(
                f"{path}: step {short(step)} is not a step of this run (0..{config.steps})"
            )
        if seed != config.seed:
            raise CheckpointError(
                f"{path}: written by another run (seed {short(seed)}, config.json says "
                f"{config.seed})"
            )
        seconds = meta.get("seconds", 0.0)
        loss_sum, loss_count = meta.get("loss_sum", 0.0), meta.get("loss_count", 0)
        ok = (
            type(seconds) in (int, float)
            and math.isfinite(seconds)
            and seconds >= 0
            and type(loss_sum) in (int, float)
            and math.isfinite(loss_sum)
            and type(loss_count) is int
            and 0 <= loss_count <= step
        )
        if not ok:
            found = short({"seconds": seconds, "loss_sum": loss_sum, "loss_count": loss_count})
            raise CheckpointError(f"{path}: damaged training tally {found}")
        return cls(step, float(seconds), float(loss_sum), loss_count)


def restore(run: RunDir, model: nn.Module, optimizer: Optimizer, config: TrainConfig) -> Tally:
    """Load the run's checkpoint into ``model`` and ``optimizer``; where training stands."""
    if not run.file(CHECKPOINT_FILE).exists():
        log.warning("%s has no checkpoint yet: starting it again at step 0", run)
        return Tally()
    meta = load_training_state(run.path, model, optimizer)
    start = Tally.from_meta(meta, run.file(CHECKPOINT_FILE), config)
    log.info("resuming %s at step %d", run, start.step)
    return start


def _check_same_data(saved: dict[str, Any], data: MNISTLike, run: RunDir) -> None:
    """A resumed run sees the data it started with (same split sizes), wherever they live now."""
    before = saved.get("dataset") or {}
    now = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    if any(k in before and before[k] != v for k, v in now.items()):
        if (
            before.get("test") == now["test"]
            and before.get("val") == VALIDATION_SIZE != now["val"]
            and before.get("train", 0) + before["val"] == now["train"] + now["val"]
        ):  # the same files, split as before small training files kept a twelfth for validation
            total = now["train"] + now["val"]
            raise ConfigError(
                f"{run} held out {VALIDATION_SIZE:,} of its {total:,} training images for "
                f"validation; a file this small now holds out a twelfth ({now['val']}), so the "
                "run cannot continue on the same split: start a new run"
            )
        raise ConfigError(
            f"{run} was trained on {before.get('train')}/{before.get('val')}/{before.get('test')} "
            f"images; these data have {now['train']}/{now['val']}/{now['test']}: "
            "is --data-dir the same data?"
        )


def _run(
    config: TrainConfig,
    run: RunDir,
    device: torch.device,
    plan: StepPlan,
    *,
    saved: dict[str, Any] | None,
    on_log: Callable[[dict[str, Any]], None] | None,
    progress: bool,
    data: MNISTLike | None,
    curves: bool = True,
) -> TrainResult:
    """Set up, loop, finish. ``saved``: the run's config.json when it is resumed, else None."""
    assert config.seed is not None  # set by train(); resume() reads it back
    par = distributed.current()  # rank and process count under torchrun; else one process
    on_log = _announce(on_log, plan)
    if data is None:
        data = load_dataset(config.dataset, config.data_dir, full_train=config.full_train)
    n_train = len(data.train)
    if n_train < config.batch_size:
        raise ConfigError(f"batch size {config.batch_size} exceeds the {n_train} training images")
    if saved is not None:
        _check_same_data(saved, data, run)

    torch.manual_seed(config.seed)
    model = prepare_model(build_model(config.model), plan)
    optimizer = make_optimizer(model.parameters(), config.lr, plan)
    start = restore(run, model, optimizer, config) if saved is not None else Tally()
    if par.is_main:
        _prepare_files(run, config, saved, start, model, data, device, par, plan)

    # The whole training split lives on the device as uint8 (43 MB); batches are gathered there.
    train_x = data.train.images.to(device)
    train_y = data.train.labels.to(device)
    step_fn = build_step(
        par.wrap(model, device),
        optimizer,
        plan,
        lr=lr_schedule(config.schedule, config.steps, config.lr),
        start_step=start.step,
        label_smoothing=config.label_smoothing,
    )
    batches = BatchSource(
        train_x,
        train_y,
        seed=config.seed,
        batch_size=config.batch_size,
        shift=config.shift,
        channels_last=plan.channels_last,
    )

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batches(step)
        return par.shard(x), par.shard(y)  # this process's share of the global batch

    # The first validation digit's conv1 maps are drawn at every log step.
    board = tblog.open_log(
        config.tensorboard,
        run.path,
        data.val.images[0],
        config.batch_size,
        start.step,
        write=par.is_main,
    )
    saver = _Saver(model, optimizer, config, data, run, last=start.step if start.step else None)
    logger = _Recorder(model, optimizer, data, config, device, run, on_log, board, saver)
    bar = _progress_bar(config.steps, start.step) if progress and par.is_main else None

    model.train()
    step = start.step
    loss_sum = torch.full((), start.loss_sum, device=device)
    n_losses = start.loss_count
    synchronize(device)
    t0 = time.perf_counter() - start.seconds  # time before a resume keeps counting

    def elapsed() -> float:
        synchronize(device)
        return time.perf_counter() - t0

    with _StopFlag() as stop, contextlib.ExitStack() as cleanup:
        if bar is not None:
            cleanup.callback(bar.close)
        if step == 0:
            logger.record(0, *batch(0), loss_sum, 0, 0.0)
        while step < config.steps:
            x, y = batch(step)
            par.seed_step(config.seed, step)
            loss_sum += step_fn(x, y)
            n_losses += 1
            step += 1
            if bar is not None:
                bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                probe = (x, y) if step == config.steps else batch(step)
                logger.record(step, *probe, loss_sum, n_losses, elapsed())
                loss_sum.zero_()
                n_losses = 0
            if step % config.checkpoint_every == 0 or step == config.steps or stop.set:
                saver.save(step, loss_sum, n_losses, elapsed())
            if stop.set:
                raise TrainingInterrupted(
                    f"interrupted at step {step}; checkpoint saved: continue with "
                    f"'mnist-cnn train --resume {run}'"
                )
    seconds = elapsed() if step > start.step else start.seconds
    if board is not None:
        board.close()

    test = par.evaluate(
        model, data.test.images, data.test.labels, batch_size=config.eval_batch_size, device=device
    )
    if par.is_main:
        run.write_results({"step": step, "train_seconds": seconds, "test": test.to_dict()})
        from .card import write_card

        if curves:
            from .inspect import save_training_curves  # matplotlib is imported only when needed

            save_training_curves(run.path)  # <run>/curves.png: loss and accuracy against step
        else:  # a picture from before a resume would show a run that is not this one
            (run.path / CURVES_FILE).unlink(missing_ok=True)
        write_card(run.path)  # <run>/README.md: the model card
    return TrainResult(run_dir=run.path, config=config, steps=step, seconds=seconds, test=test)


def _prepare_files(
    run: RunDir,
    config: TrainConfig,
    saved: dict[str, Any] | None,
    start: Tally,
    model: nn.Module,
    data: MNISTLike,
    device: torch.device,
    par: distributed.Parallel,
    plan: StepPlan,
) -> None:
    """Rank 0 writes config.json (new run, or settings changed by resume) and trims metrics."""
    if saved is None:
        saved = {
            "train": config.to_dict(),
            "parameters": count_parameters(model),
            "dataset": {
                "name": data.name,
                "train": len(data.train),
                "val": len(data.val),
                "test": len(data.test),
            },
            "environment": environment_info(device),
            "plan": plan.to_dict(),
            "distributed": par.describe(),
        }
        run.write_config(saved)
    elif saved["train"] != config.to_dict():  # --steps or --data-dir given to resume
        run.write_config({**saved, "train": config.to_dict()})
    if start.step < config.steps:
        run.remove_results()  # after config.json: a kill in between leaves a resumable run
    # Records up to the checkpoint were logged before it was written; later ones are replayed.
    run.reset_metrics(start.step if start.step > 0 else -1)


def _progress_bar(total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


class _Recorder:
    """One metrics record per log step: to metrics.jsonl, ``on_log`` and TensorBoard."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        data: MNISTLike,
        config: TrainConfig,
        device: torch.device,
        run: RunDir,
        on_log: Callable[[dict[str, Any]], None] | None,
        board: Any,
        saver: _Saver,
    ) -> None:
        self.model, self.optimizer, self.data, self.config = model, optimizer, data, config
        self.device, self.run, self.on_log, self.board, self.saver = (
            device,
            run,
            on_log,
            board,
            saver,
        )
        self.par = distributed.current()

    def record(
        self, step: int, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor, n: int, t: float
    ) -> None:
        model, par = self.model, self.par
        loss = par.average(loss_sum).item() / n if n else None
        if loss is not None and not math.isfinite(loss):
            raise _diverged(step, self.run, self.saver.last)
        # The seed's training accuracy: the batch of this step, dropout off.
        model.eval()
        with torch.inference_mode():
            train_acc = par.average((model(x).argmax(1) == y).float().mean()).item()
        model.train()
        val = par.evaluate(
            model,
            self.data.val.images,
            self.data.val.labels,
            batch_size=self.config.eval_batch_size,
            device=self.device,
            measure_memory=False,
        )
        rec = {
            "step": step,
            "loss": loss,
            "train_accuracy": train_acc,
            "val_accuracy": val.accuracy,
            "seconds": round(t, 3),
        }
        if not par.is_main:
            return
        self.run.append_metrics(rec)
        if self.on_log is not None:
            self.on_log(rec)
        if self.board is not None:
            self.board.log(rec, model, self.optimizer)


class _Saver:
    """Checkpoints: the training state plus the tally, only when every number is finite."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        config: TrainConfig,
        data: MNISTLike,
        run: RunDir,
        last: int | None,
    ) -> None:
        self.model, self.optimizer, self.config, self.run = model, optimizer, config, run
        self.facts = {"dataset": data.name, "classes": list(data.classes)}
        self.last = last  # the step of the last checkpoint written (None: none yet)
        self.par = distributed.current()

    def save(self, step: int, loss_sum: torch.Tensor, n: int, seconds: float) -> None:
        loss = self.par.average(loss_sum)
        finite = bool(torch.isfinite(loss)) and all(
            bool(torch.isfinite(p).all()) for p in self.model.parameters()
        )
        if not finite:
            raise _diverged(step, self.run, self.last)
        if self.par.is_main:
            tally = {"seconds": round(seconds, 3), "loss_sum": loss.item(), "loss_count": n}
            meta = {"step": step, "seed": self.config.seed, **tally, **self.facts}
            save_training_state(self.run.path, self.model, self.optimizer, meta)
        self.last = step


def _diverged(step: int, run: RunDir, last: int | None = None) -> TrainingDiverged:
    kept = f"the checkpoint of step {last} is kept" if last is not None else "no checkpoint written"
    return TrainingDiverged(
        f"training diverged: the loss or the weights became NaN or infinite by step {step}; "
        f"stopped ({kept} in {run}). Start a new run with a lower --lr"
    )
