"""Verify and time training on this machine: the fast path against the plain loop.

Three things, on the device it runs on:

- equivalence: the fast step computes the same function as the plain step: in fp32 the
  weights agree within float rounding after a few steps from the same weights; where the plan
  computes in bf16, its logits agree with fp32's within bf16's 8 significant bits;
- speed: the plain loop (the familiar example script: a ``TensorDataset`` of float images, a
  shuffling ``DataLoader`` at batch 50, PyTorch's default Adam, each batch copied to the device,
  eager, fp32) against what ``mnist-cnn train`` runs, in alternating blocks so that background
  load falls on both alike: the ratio is the figure that means something. One part of train's
  plan is left out here (``bench_plan``): keeping freed memory (glibc), which holds for the
  whole process and so would speed the plain loop timed beside it too (its ~6,000 page faults a
  step fall to none); the plain loop runs as a script of its own would. That setting's effect
  is measured by ``benchmarks/page_faults.py``;
- the limit: the machine's large-matrix-multiply rate at the step's precision, and the step's
  arithmetic rate as a fraction of it.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from .batches import BatchSource
from .device import (
    PeakMemory,
    measure_peak_memory,
    release_freed_memory,
    select_device,
    synchronize,
)
from .model import ModelConfig, build_model
from .step import (
    StepPlan,
    autocast,
    build_step,
    make_optimizer,
    prepare_model,
    resolve_plan,
    step_body,
)

TRAIN_IMAGES = 55_000  # the size of the training split the seed trains on
IMAGE_SIDE = 28
DEFAULT_MATMUL_SIZE = 2048  # square matrices on a CPU; 8,192 on an accelerator

# Tolerances of the equivalence rows, relative to the largest reference logit. Both compare
# logits on a held-out batch after a few steps from the same weights (weights themselves are a
# poor measure: Adam divides each gradient by its running scale, so a weight whose gradient is
# rounding noise moves by up to ±lr whichever way the noise falls). fp32: the fused and unfused
# Adam, and the two layouts' convolutions, differ in the last bits: 1e-4 of the scale. bf16
# keeps 8 significant bits (2^-8 per rounding) and a logit sums thousands of rounded products:
# 3% of the scale.
FP32_LOGIT_RTOL = 1e-4
FP32_LOSS_RTOL = 1e-5
BF16_LOGIT_RTOL = 0.03


@dataclass(frozen=True)
class BenchRow:
    """One training loop's throughput and peak memory."""

    name: str
    steps: int
    seconds: float
    images_per_s: float
    ratio: float  # images/s relative to the plain loop
    memory: PeakMemory
    gflop_per_s: float = 0.0  # the network's multiply-adds per second (2 FLOP each)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "steps": self.steps,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "ratio": self.ratio,
            "gflop_per_s": self.gflop_per_s,
            "memory": self.memory.to_dict(),
        }


@dataclass(frozen=True)
class Equivalence:
    """Whether the fast step computes the plain step's function, at one precision."""

    precision: str
    compared: str  # what was compared, in words
    difference: float  # the largest difference found
    tolerance: float
    ok: bool


@dataclass(frozen=True)
class MatmulRate:
    """The machine's large-matrix-multiply rate: the limit a training step is measured against."""

    precision: str
    size: int
    gflop_per_s: float


@dataclass
class BenchReport:
    """Everything ``mnist-cnn bench`` measured."""

    plan: StepPlan
    rows: list[BenchRow]
    equivalence: list[Equivalence]
    matmul: MatmulRate | None = None
    batch_size: int = 50
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.equivalence)

    @property
    def fraction_of_limit(self) -> float | None:
        """The fast step's GFLOP/s as a fraction of the matmul rate at its precision."""
        if self.matmul is None or not self.rows:
            return None
        return self.rows[-1].gflop_per_s / self.matmul.gflop_per_s

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(),
            "batch_size": self.batch_size,
            "rows": [r.to_dict() for r in self.rows],
            "equivalence": [asdict(e) for e in self.equivalence],
            "matmul": asdict(self.matmul) if self.matmul else None,
            "fraction_of_matmul_rate": self.fraction_of_limit,
            "ok": self.ok,
        }


def step_flops(config: ModelConfig, batch: int) -> float:
    """Floating-point operations of one training step (2 per multiply-add), layers with weights.

    Backward costs twice the forward (input and weight gradients), less conv1's input gradient,
    which nothing needs. Element-wise work (ReLU, pooling, batch norm, Adam) is not counted.
    """
    k2 = config.kernel_size**2
    side = IMAGE_SIDE
    conv1 = side * side * config.conv1_channels * k2 * 1
    conv2 = (side // 2) ** 2 * config.conv2_channels * k2 * config.conv1_channels
    fc1 = (side // 4) ** 2 * config.conv2_channels * config.hidden
    fc2 = config.hidden * config.num_classes
    forward = conv1 + conv2 + fc1 + fc2
    backward = 2 * forward - conv1
    return 2.0 * batch * (forward + backward)


def matmul_rate(
    device: torch.device, precision: str, *, size: int = 0, min_seconds: float = 0.5
) -> MatmulRate:
    """GFLOP/s of square matrix products at ``precision`` (2,048² on a CPU, 8,192² on a GPU),
    timed over at least ``min_seconds`` and 3 products."""
    size = size or (DEFAULT_MATMUL_SIZE if device.type == "cpu" else 8192)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    for _ in range(2):  # warm-up: the library picks its kernel
        a @ b
    reps, seconds = 0, 0.0
    while seconds < min_seconds or reps < 3:  # long enough for a steady figure
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        seconds += time.perf_counter() - t0
        reps += 1
    return MatmulRate(precision, size, 2.0 * size**3 * reps / seconds / 1e9)


def _synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, IMAGE_SIDE, IMAGE_SIDE), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, 10, (n,), generator=gen)


# --------------------------------------------------------------------------- equivalence


def _twins(
    config: ModelConfig, plain_plan: StepPlan, fast_plan: StepPlan
) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    plain = build_model(config)
    fast = build_model(config)
    fast.load_state_dict(plain.state_dict())
    return prepare_model(plain, plain_plan), prepare_model(fast, fast_plan)


def bench_plan(device: torch.device, precision: str, *, plain: bool = False) -> StepPlan:
    """The plan ``train`` resolves, less what would also change the plain loop: glibc's kept
    freed memory is process-wide (module docstring)."""
    return dataclasses.replace(
        resolve_plan(device, precision, plain=plain), freed_memory_kept=False
    )


def check_equivalence(
    device: torch.device,
    precision: str = "auto",
    *,
    model_config: ModelConfig | None = None,
    steps: int = 3,
    batch_size: int = 50,
) -> list[Equivalence]:
    """The fast step against the plain fp32 step from the same weights (dropout off).

    Always fp32 fast vs fp32 plain: losses and weights after ``steps`` steps. Where ``precision``
    resolves to bf16 on ``device``, also the bf16 fast step's logits against the fp32 plain
    step's, after the same steps.
    """
    # Dropout off: the masks are drawn in each path's own order.
    config = dataclasses.replace(model_config or ModelConfig(), dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.rand(batch_size, 1, IMAGE_SIDE, IMAGE_SIDE, generator=gen).to(device),
            torch.randint(0, 10, (batch_size,), generator=gen).to(device),
        )
        for _ in range(steps + 1)
    ]
    held_x = batches.pop()[0]  # logits are compared on a batch neither step trained on
    reference = bench_plan(device, "fp32", plain=True)

    def run(plan: StepPlan, model: torch.nn.Module) -> list[float]:
        step = build_step(model, make_optimizer(model.parameters(), 1e-4, plan), plan)
        model.train()
        out = []
        for x, y in batches:
            if plan.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(step(x, y).item())
        synchronize(device)
        return out

    def logits(model: torch.nn.Module, plan: StepPlan) -> torch.Tensor:
        model.eval()
        x = held_x.contiguous(memory_format=torch.channels_last) if plan.channels_last else held_x
        with torch.no_grad(), autocast(device.type, plan.autocast_dtype):
            return model(x).float()

    fast32 = bench_plan(device, "fp32")
    plain, fast = _twins(config, reference, fast32)
    lp, lf = run(reference, plain), run(fast32, fast)
    ref = logits(plain, reference)
    scale = ref.abs().max().item()
    diff = (logits(fast, fast32) - ref).abs().max().item()
    worst_loss = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(lp, lf, strict=True))
    losses_ok = worst_loss <= FP32_LOSS_RTOL
    results = [
        Equivalence(
            "fp32",
            f"logits after {steps} steps (losses within {FP32_LOSS_RTOL:g} relative: "
            f"{'yes' if losses_ok else f'no, {worst_loss:.2g}'})",
            diff,
            FP32_LOGIT_RTOL * scale,
            diff <= FP32_LOGIT_RTOL * scale and losses_ok,
        )
    ]
    chosen = bench_plan(device, precision)
    if chosen.precision == "bf16":
        low = _twins(config, reference, chosen)[1]
        run(chosen, low)
        diff = (logits(low, chosen) - ref).abs().max().item()
        results.append(
            Equivalence(
                "bf16",
                f"logits after {steps} steps, bf16 fast step against the fp32 plain step",
                diff,
                BF16_LOGIT_RTOL * scale,
                diff <= BF16_LOGIT_RTOL * scale,
            )
        )
    return results


# --------------------------------------------------------------------------- the two loops

Loop = Callable[..., tuple[torch.nn.Module, Iterator[torch.Tensor]]]


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
                yield step_body(model, optimizer, x.to(device), y.to(device), None)

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
    plan = bench_plan(device, precision)
    model = prepare_model(build_model(model_config), plan)
    step = build_step(model, make_optimizer(model.parameters(), lr, plan), plan)
    batches = BatchSource(
        images.to(device),
        labels.to(device),
        seed=0,
        batch_size=batch_size,
        channels_last=plan.channels_last,
    )

    def steps() -> Iterator[torch.Tensor]:
        model.train()
        i = 0
        while True:
            yield step(*batches(i))
            i += 1

    return model, steps()


def run_bench(
    device: str | torch.device = "auto",
    *,
    steps: int = 300,
    batch_size: int = 50,
    warmup: int = 10,
    rounds: int = 3,
    precision: str = "auto",
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

    def ours(*a, **kw):
        return fast_loop(*a, precision=precision, **kw)

    loops: dict[str, Loop] = {"plain loop": plain_loop, "ours (fast path)": ours}

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
    flops = step_flops(model_config, batch_size)
    rows = []
    for name in loops:
        ips = steps * batch_size / seconds[name]
        gflops = flops * steps / seconds[name] / 1e9
        rows.append(BenchRow(name, steps, seconds[name], ips, ips / base, memory[name], gflops))
    return rows


def bench(
    device: str | torch.device = "auto",
    *,
    steps: int = 300,
    batch_size: int = 50,
    precision: str = "auto",
    model_config: ModelConfig | None = None,
    matmul_size: int = 0,
    matmul_seconds: float = 0.5,
    **kw,
) -> BenchReport:
    """``mnist-cnn bench``: equivalence first, then the timed loops, then the machine's rate.

    Where the fast path computes another function, nothing is timed: the report holds only the
    equivalence rows, and ``ok`` is False.
    """
    dev = device if isinstance(device, torch.device) else select_device(device)
    plan = bench_plan(dev, precision)  # refused here, before anything runs
    equivalence = check_equivalence(dev, precision, model_config=model_config)
    if not all(e.ok for e in equivalence):  # timing another function would mean nothing
        return BenchReport(plan, [], equivalence, None, batch_size)
    rows = run_bench(
        dev,
        steps=steps,
        batch_size=batch_size,
        precision=precision,
        model_config=model_config,
        **kw,
    )
    rate = matmul_rate(dev, plan.precision, size=matmul_size, min_seconds=matmul_seconds)
    return BenchReport(plan, rows, equivalence, rate, batch_size)


def _release(device: torch.device) -> None:
    gc.collect()
    release_freed_memory()  # the fast plan keeps freed heap memory: not counted in what follows
    if device.type == "cuda":
        torch.cuda.empty_cache()


def format_table(rows: list[BenchRow]) -> str:
    """The rows as a Markdown table."""
    mib = 1024 * 1024
    lines = [
        "| loop | steps | images/s | ratio | GFLOP/s | peak memory |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        m = r.memory
        if m.peak_reserved is not None:
            mem = f"{m.peak_reserved / mib:.0f} MiB reserved (CUDA)"
        elif m.peak_rss_growth is not None:
            mem = f"{m.peak_rss_growth / mib:.0f} MiB resident growth"
        else:
            mem = "not measured"
        lines.append(
            f"| {r.name} | {r.steps} | {r.images_per_s:,.0f} | {r.ratio:.2f}× "
            f"| {r.gflop_per_s:.0f} | {mem} |"
        )
    return "\n".join(lines)


def format_report(report: BenchReport) -> str:
    """The equivalence rows, the speed table and the fraction of the machine's rate."""
    lines = [
        "| check | compared | largest difference | tolerance | result |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for e in report.equivalence:
        verdict = "same function" if e.ok else "DIFFERENT"
        lines.append(
            f"| fast path = plain step ({e.precision}) | {e.compared} "
            f"| {e.difference:.3g} | {e.tolerance:.3g} | {verdict} |"
        )
    if report.rows:
        lines += ["", format_table(report.rows)]
    if report.matmul is not None and report.fraction_of_limit is not None:
        m = report.matmul
        lines += [
            "",
            f"matrix multiply {m.size}×{m.size} in {m.precision}: {m.gflop_per_s:,.0f} GFLOP/s; "
            f"the fast step ({report.plan.precision}) runs at {report.rows[-1].gflop_per_s:,.0f} "
            f"GFLOP/s = {100 * report.fraction_of_limit:.0f}% of it",
        ]
    return "\n".join(lines)
