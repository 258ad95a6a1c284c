"""Side-by-side speed of the plain training loop and the fast path on this machine.

The plain loop is the familiar example script: a ``TensorDataset`` of float images, a shuffling
``DataLoader`` at batch 50, PyTorch's default Adam, each batch copied to the device, eager.
"Ours" is what ``mnist-cnn train`` runs (fast.py). Both train the same network on the same
number of steps; their timed blocks alternate, so background load falls on both alike, and
the figure that means something is the ratio.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from . import fast
from .device import PeakMemory, measure_peak_memory, select_device, synchronize
from .model import ModelConfig, build_model, loss_fn
from .train import epoch_order

TRAIN_IMAGES = 55_000  # the size of the training split the seed trains on


@dataclass(frozen=True)
class BenchRow:
    """One training loop's throughput and peak memory."""

    name: str
    steps: int
    seconds: float
    images_per_s: float
    ratio: float  # images/s relative to the plain loop
    memory: PeakMemory

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "steps": self.steps,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "ratio": self.ratio,
            "memory": self.memory.to_dict(),
        }


def _synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, 10, (n,), generator=gen)


def plain_loop(
    images: torch.Tensor,
    labels: torch.Tensor,
    model_config: ModelConfig,
    device: torch.device,
    *,
    batch_size: int = 50,
    lr: float = 1e-4,
) -> tuple[torch.nn.Module, Iterator[torch.Tensor]]:
    """The reference: (model, an endless iterator that takes one step per ``next``)."""
    from torch.utils.data import DataLoader, TensorDataset

    model = build_model(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(
        TensorDataset(images.float().div(255).unsqueeze(1), labels),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
    )

    def steps() -> Iterator[torch.Tensor]:
        model.train()
        while True:
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss = loss_fn(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                yield loss.detach()

    return model, steps()


def fast_loop(
    images: torch.Tensor,
    labels: torch.Tensor,
    model_config: ModelConfig,
    device: torch.device,
    *,
    batch_size: int = 50,
    lr: float = 1e-4,
    precision: str = "auto",
) -> tuple[torch.nn.Module, Iterator[torch.Tensor]]:
    """What ``mnist-cnn train`` runs: (model, an endless iterator, one step per ``next``)."""
    model = fast.prepare_model(build_model(model_config), device, fast=True)
    optimizer = fast.make_adam(model.parameters(), lr, device, fast=True)
    step = fast.build_train_step(model, optimizer, device, fast=True, precision=precision)
    batches = fast.BatchSource(
        images.to(device),
        labels.to(device),
        seed=0,
        batch_size=batch_size,
        order=epoch_order,
        channels_last=device.type == "cpu",
    )

    def steps() -> Iterator[torch.Tensor]:
        model.train()
        i = 0
        while True:
            yield step(*batches(i))
            i += 1

    return model, steps()


Loop = Callable[..., tuple[torch.nn.Module, Iterator[torch.Tensor]]]


def run_bench(
    device: str | torch.device = "auto",
    *,
    steps: int = 300,
    batch_size: int = 50,
    warmup: int = 10,
    rounds: int = 3,
    model_config: ModelConfig | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> list[BenchRow]:
    """Time the plain loop and ours for ``steps`` steps each, alternating in ``rounds`` blocks.

    Peak memory is measured first, one loop at a time from a clean allocator, over building the
    loop (its copy of the data included) and its warm-up steps.
    """
    dev = device if isinstance(device, torch.device) else select_device(device)
    model_config = model_config or ModelConfig()
    if images is None or labels is None:
        images, labels = _synthetic(TRAIN_IMAGES)
    loops: dict[str, Loop] = {"plain loop": plain_loop, "ours (fast path)": fast_loop}

    memory: dict[str, PeakMemory] = {}
    for name, make in loops.items():
        _release(dev)
        with measure_peak_memory(dev) as peak:
            _, it = make(images, labels, model_config, dev, batch_size=batch_size)
            for _ in range(warmup):
                next(it)
            synchronize(dev)
        memory[name] = peak
        del it
    _release(dev)

    iters = {}
    for name, make in loops.items():
        torch.manual_seed(0)
        _, it = make(images, labels, model_config, dev, batch_size=batch_size)
        for _ in range(warmup):
            next(it)
        iters[name] = it
    per_round = [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]
    seconds = dict.fromkeys(loops, 0.0)
    for n in per_round:
        for name, it in iters.items():
            synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(n):
                next(it)
            synchronize(dev)
            seconds[name] += time.perf_counter() - t0
    base = steps * batch_size / seconds["plain loop"]
    rows = []
    for name in loops:
        ips = steps * batch_size / seconds[name]
        rows.append(BenchRow(name, steps, seconds[name], ips, ips / base, memory[name]))
    return rows


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def format_table(rows: list[BenchRow]) -> str:
    """The rows as a Markdown table."""
    mib = 1024 * 1024
    lines = [
        "| loop | steps | images/s | ratio | peak memory |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        m = r.memory
        if m.peak_reserved is not None:
            mem = f"{m.peak_reserved / mib:.0f} MiB reserved (CUDA)"
        elif m.peak_rss_growth is not None:
            mem = f"{m.peak_rss_growth / mib:.0f} MiB resident growth"
        else:
            mem = "not measured"
        lines.append(f"| {r.name} | {r.steps} | {r.images_per_s:,.0f} | {r.ratio:.2f}× | {mem} |")
    return "\n".join(lines)
