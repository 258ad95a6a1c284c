"""Data-parallel training across the processes that ``torchrun`` starts.

``torchrun --nproc_per_node=N -m mnist_cnn train ...`` starts N copies of the command line; each
joins one process group (gloo for CPU tensors, NCCL for CUDA tensors) and trains a replica of the
network wrapped in DistributedDataParallel, which averages the gradients after every backward pass.

- ``--batch-size`` is the GLOBAL batch: the data order is the pure function of (seed, step)
  that :func:`mnist_cnn.batches.batch_indices` gives, so every process knows the whole batch of
  a step and takes its own contiguous 1/N of it. Each process's loss is the mean over its equal
  share, and the mean of those means is the mean over the whole batch: N processes take the same
  steps as one process with the same batch (up to float rounding), and the seed recipe's results
  carry over.
- Dropout masks: each process seeds its dropout generator from (seed, rank, step) before every step,
  so processes never share masks and a resumed run draws the same masks as one that never stopped.
- Evaluation: each process evaluates a contiguous shard of the split and the confusion matrices are
  summed, so every image counts exactly once whatever N.
- Only rank 0 prints, logs and writes files; every process reads the checkpoint on ``--resume``.
- A process that dies stops the run: torchrun ends the others, and a process whose collective
  fails or waits past the timeout raises :class:`DistributedError` (one line at the CLI).

Outside torchrun everything here is a no-op and training is exactly single-process training.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .device import select_device
from .errors import ConfigError, MnistCnnError
from .evaluate import EvalResult, evaluate

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0  # how long a collective waits for a silent process before giving up


class DistributedError(MnistCnnError):
    """Another process of a multi-process run failed, vanished or stopped answering."""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ConfigError(f"environment variable {name} is not a whole number") from None


def launched_world_size() -> int:
    """How many processes torchrun started for this run (1 outside torchrun)."""
    return _env_int("WORLD_SIZE", 1)


@dataclass(frozen=True)
class Parallel:
    """This process's place in the run; ``Parallel()`` is a single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict[str, Any]:
        """For ``config.json``: how many processes trained and over which backend."""
        backend = str(dist.get_backend()) if self.is_distributed else None
        return {"world_size": self.world_size, "backend": backend}

    def device(self, name: str = "auto") -> torch.device:
        """The device this process trains on: with CUDA, GPU ``LOCAL_RANK`` of its machine."""
        device = select_device(name)
        if not self.is_distributed:
            return device
        if device.type == "cuda":
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise ConfigError(
                    f"process {self.local_rank} on this machine needs GPU {self.local_rank}, "
                    f"but only {count} are visible: start at most {count} processes per machine"
                )
            return torch.device("cuda", self.local_rank)
        if device.type != "cpu":
            raise ConfigError(
                f"multi-process training runs on CUDA or the CPU, not {device.type}: "
                "use --device cpu"
            )
        return device

    def check_batch(self, batch_size: int) -> None:
        """Refuse a global batch that does not split evenly among the processes."""
        if batch_size % self.world_size:
            lower = batch_size - batch_size % self.world_size
            raise ConfigError(
                f"--batch-size {batch_size} is the global batch and must divide evenly among "
                f"the {self.world_size} processes: try {lower or self.world_size} or "
                f"{lower + self.world_size}"
            )

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's contiguous share of a global batch (indices or images)."""
        if not self.is_distributed:
            return batch
        share = len(batch) // self.world_size
        return batch[self.rank * share : (self.rank + 1) * share]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model as the training step should call it: DDP across processes, else itself."""
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def seed_step(self, seed: int, step: int) -> None:
        """Seed this process's dropout RNG from (seed, rank, step); no-op in a single process.

        Per step, not once: a resumed run then draws the masks an uninterrupted run drew, although
        the checkpoint holds only rank 0's RNG state.
        """
        if self.is_distributed:
            state = np.random.SeedSequence([seed, self.rank, step]).generate_state(2, np.uint32)
            torch.manual_seed(int(state[0]) << 32 | int(state[1]))

    # ----------------------------------------------------------------- collectives

    def average(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a scalar tensor over the processes (each holds an equal share)."""
        if not self.is_distributed:
            return value
        total = value.detach().clone().float()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world_size

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every process."""
        if not self.is_distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.broadcast(t, src=0)
        return int(t.item())

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` on every process (sent as UTF-8 bytes, no pickle)."""
        if not self.is_distributed:
            return text
        data = text.encode()
        size = self.broadcast_int(len(data))
        if size == 0:  # torch.frombuffer refuses an empty buffer
            return ""
        buf = torch.zeros(size, dtype=torch.uint8)
        if self.is_main:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buf, src=0)
        return bytes(buf.tolist()).decode()

    def evaluate(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int = 100,
        device: torch.device | str | None = None,
        measure_memory: bool = True,
    ) -> EvalResult:
        """:func:`mnist_cnn.evaluate.evaluate` split across the processes, counts summed.

        Process r takes the r-th of N contiguous shards (``tensor_split``: sizes differ by at most
        one), so every image is counted exactly once. Seconds are the slowest process's; the
        memory figure and notes are this process's own.
        """
        if not self.is_distributed:
            return evaluate(
                model,
                images,
                labels,
                batch_size=batch_size,
                device=device,
                measure_memory=measure_memory,
            )
        part = evaluate(
            model,
            images.tensor_split(self.world_size)[self.rank],
            labels.tensor_split(self.world_size)[self.rank],
            batch_size=batch_size,
            device=device,
            measure_memory=measure_memory,
        )
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        confusion = torch.tensor(part.confusion, dtype=torch.int64, device=dev)
        dist.all_reduce(confusion, op=dist.ReduceOp.SUM)
        # Batch size that ran (smallest after any out-of-memory back-off) and the slowest time.
        used = torch.tensor([-part.batch_size, part.seconds], dtype=torch.float64, device=dev)
        dist.all_reduce(used, op=dist.ReduceOp.MAX)
        return EvalResult(
            total=int(confusion.sum()),
            correct=int(confusion.diagonal().sum()),
            confusion=confusion.cpu().tolist(),
            batch_size=int(-used[0]),
            seconds=float(used[1]),
            memory=part.memory,
            notes=part.notes,
        )


def current() -> Parallel:
    """This process's place in the run: from the process group if one is joined, else single.

    Started by torchrun without a process group (a script calling ``train`` directly) is an
    error, not N runs writing over each other.
    """
    if dist.is_available() and dist.is_initialized():
        return Parallel(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=_env_int("LOCAL_RANK", 0),
        )
    world = launched_world_size()
    if world > 1:
        raise ConfigError(
            f"started as one of {world} processes but not joined to them: call training inside "
            "'with mnist_cnn.distributed.process_group():'"
        )
    return Parallel()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise DistributedError(
        "stopped by the launcher: another process of the run failed (its error is above); "
        "continue from the last checkpoint with --resume RUN"
    )


@contextmanager
def process_group(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Parallel]:
    """Join the run's process group when started by torchrun, and leave it afterwards.

    Outside torchrun (``WORLD_SIZE`` unset or 1) this yields ``Parallel()`` and does nothing.
    CPU tensors travel over gloo and CUDA tensors over NCCL. A collective that waits more than
    ``timeout_s`` seconds for another process fails; that failure, a lost connection, or the
    launcher's SIGTERM (sent when another process dies) become one :class:`DistributedError`.
    """
    world = launched_world_size()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield current()
        return
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed: start a single process")
    if not timeout_s > 0:
        raise ConfigError("the process-group timeout must be positive")
    local_rank = _env_int("LOCAL_RANK", 0)
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        if local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (dist.DistError, RuntimeError, ValueError) as err:
            raise DistributedError(
                f"could not join the other processes of the run ({_first_line(err)}); "
                "check torchrun's --nnodes/--rdzv-endpoint (or --master-addr/--master-port)"
            ) from None
        par = current()
        log.info("process %d of %d joined (%s)", par.rank, par.world_size, backend)
        try:
            yield par
        except dist.DistError as err:
            raise DistributedError(_lost_message(par, err)) from None
        except RuntimeError as err:
            # Older gloo builds raise plain RuntimeErrors for a closed connection or a timeout.
            text = str(err).lower()
            if not any(k in text for k in ("gloo", "nccl", "connection", "timed out", "timeout")):
                raise
            raise DistributedError(_lost_message(par, err)) from None
        finally:
            try:
                dist.destroy_process_group()
            except Exception as err:  # already stopping: never hide the first error
                log.debug("destroy_process_group: %s", err)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _first_line(err: BaseException) -> str:
    """The gist of a backend error: its first sentence, without the source-file prefix."""
    lines = str(err).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", lines[0]) if lines else ""
    text = text.split(". ")[0].rstrip(".")
    return text or type(err).__name__


def _lost_message(par: Parallel, err: BaseException) -> str:
    return (
        f"process {par.rank} of {par.world_size} lost the others ({_first_line(err)}): the run "
        "stops; continue from the last checkpoint with --resume RUN"
    )
