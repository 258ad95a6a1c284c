"""The training step: a plan decided once, one step body, and the ways to run it.

A ``StepPlan`` is resolved once per run from (device, precision, plain or not) and recorded in
the run's config.json. What it decides, by device (the recipe and its meaning never change):

- precision: ``auto`` computes in bf16 autocast (fp32 master weights) where the device computes
  bf16 natively (AVX-512-BF16 / AMX CPUs, CUDA), fp32 elsewhere. ``bf16`` where it is only
  emulated is refused. The plain step honours the precision too: ``--plain-step`` changes how a
  step is computed, never what, so it is the reference the fast step is compared against.
- the fast path (not plain): Adam's fused kernel (one pass over each parameter instead of ~10
  element-wise ops); on the CPU channels-last tensors (oneDNN's preferred layout); on CUDA the
  whole step (forward, backward, Adam) captured in a CUDA graph and replayed, so a step costs
  one launch instead of ~100.

``step_body`` is the one zero-grad/forward/backward/update that every path runs: the plain and
fast eager steps, the CUDA graph (and its warm-up), and ``bench``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn

from .adam import FusedAdam, Optimizer
from .device import can_keep_freed_memory, hardware_description, keep_freed_memory
from .errors import ConfigError
from .model import loss_fn

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("constant", "onecycle")

# Test-only switch, read when a plan is resolved: "absent" shows the step what an AVX2-only CPU
# shows it (auto -> fp32, bf16 refused); "native" takes the bf16 path even where bf16 is only
# emulated (slow, for tiny test inputs). Either is recorded in the plan, never silent.
BF16_SWITCH = "MNIST_CNN_TEST_BF16"
_SWITCH_VALUES = ("", "absent", "native")

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- what the device offers


def _hardware_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(whether to treat bf16 as native on ``device``, how that was decided, in words)."""
    hardware = _hardware_bf16(device)
    said = "native" if hardware else "absent"
    forced = os.environ.get(BF16_SWITCH, "")
    if forced not in _SWITCH_VALUES:
        raise ConfigError(f"{BF16_SWITCH}={forced!r}: use 'absent', 'native' or leave it unset")
    if not forced or device.type not in ("cpu", "cuda"):
        return hardware, said
    return forced == "native", f"{forced} ({BF16_SWITCH}; the hardware: {said})"


def native_bf16(device: torch.device) -> bool:
    """True where ``device`` computes bf16 matrix products natively (not emulated in fp32)."""
    return bf16_support(device)[0]


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class StepPlan:
    """How a run's training step is computed; decided once, recorded in config.json."""

    device: str  # "cpu", "cuda:0", "mps"
    requested: str  # --precision as given: auto, fp32 or bf16
    precision: str  # what the step computes in: fp32, or bf16 autocast over fp32 weights
    plain: bool  # the plain eager step (--plain-step): no fused Adam, layout or graph
    channels_last: bool
    fused_adam: bool
    cuda_graph: bool
    hardware: str  # CPU model and flags, or the GPU's name
    bf16: str  # whether bf16 is native here, and how that was decided
    threads: int  # CPU threads torch computes with
    # bf16 copies of the conv and linear weights, refreshed once per step, that the forward
    # reads instead of autocast casting each weight (and its gradient back) in every forward.
    bf16_weights: bool = False
    # glibc keeps freed blocks for reuse (device.keep_freed_memory): no fresh pages faulted in
    # for each step's buffers.
    freed_memory_kept: bool = False

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: plain fp32)."""
        return torch.bfloat16 if self.precision == "bf16" else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: what the step computes in, and how."""
        how = ["plain eager step"] if self.plain else ["fast path"]
        how.append("bf16 autocast" if self.precision == "bf16" else "fp32")
        if self.channels_last:
            how.append("channels-last")
        if self.bf16_weights:
            how.append("bf16 weight copies")
        if self.fused_adam:
            how.append("fused Adam")
        if self.freed_memory_kept:
            how.append("freed memory kept")
        if self.cuda_graph:
            how.append("CUDA graph")
        return f"{', '.join(how)} on {self.device}: {self.hardware}, {self.threads} threads"


def resolve_plan(
    device: torch.device,
    precision: str = "auto",
    *,
    plain: bool = False,
    graph: bool = True,
    distributed: bool = False,
) -> StepPlan:
    """Decide the step for ``device``; raises ConfigError (before anything is written).

    ``graph``: whether the caller allows a CUDA graph (not under DDP, whose collectives a graph
    cannot hold, nor with a learning-rate schedule, which a replayed graph would not see).
    ``distributed``: the model is wrapped in DDP, which reduces the weights' own gradients: no
    bf16 weight copies then.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    native, said = bf16_support(device)
    if precision == "bf16" and not native:
        kind = device.type.upper() if device.type != "mps" else "MPS device"
        raise ConfigError(
            f"--precision bf16 asked for, but this {kind} has no native bf16; "
            "use --precision auto or fp32"
        )
    use_bf16 = precision == "bf16" or (precision == "auto" and native)
    fast = not plain and device.type in ("cpu", "cuda")
    return StepPlan(
        device=str(device),
        requested=precision,
        precision="bf16" if use_bf16 else "fp32",
        plain=plain,
        channels_last=fast and device.type == "cpu",
        fused_adam=fast,
        cuda_graph=fast and graph and device.type == "cuda",
        hardware=hardware_description(device),
        bf16=said,
        threads=torch.get_num_threads(),
        bf16_weights=fast and use_bf16 and device.type == "cpu" and not distributed,
        freed_memory_kept=fast and device.type == "cpu" and can_keep_freed_memory(),
    )


# --------------------------------------------------------------------------- model and optimizer


def prepare_model(model: nn.Module, plan: StepPlan) -> nn.Module:
    """Move ``model`` to the plan's device, in its layout."""
    model = model.to(plan.device)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(
    params: Any, lr: float, plan: StepPlan, *, weight_decay: float = 0.0
) -> Optimizer:
    """The seed's Adam; its fused kernel where the plan says (capturable under a CUDA graph).

    On the CPU the fused kernel is called by ``FusedAdam`` (the same numbers, without
    ``torch.optim``'s 1.2–2 s import at a process's first step); the plain step keeps
    ``torch.optim.Adam`` as a plain training loop writes it.
    """
    if plan.fused_adam and plan.device_type == "cpu":
        return FusedAdam(params, lr=lr, weight_decay=weight_decay)
    extra: dict[str, Any] = {}
    if plan.fused_adam:
        extra["fused"] = True
    if plan.cuda_graph:
        extra["capturable"] = True
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)


@torch.no_grad()
def match_state_layout(optimizer: Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout.

    State loaded from a checkpoint is contiguous (NCHW) while channels-last weights are not;
    an element-wise optimizer over tensors of different layouts would round differently from
    one that never stopped, and resume would no longer be exact.
    """
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


# --------------------------------------------------------------------------- learning rate


def lr_at(step: int, total: int, peak: float, schedule: str, warmup: float = 0.2) -> float:
    """Learning rate at ``step`` of ``total``: a pure function, so resume needs no scheduler.

    ``onecycle``: linear warm-up from peak/10 over the first ``warmup`` of the run, then a cosine
    down to peak/1000 at the end (the shape of OneCycle, without momentum cycling).
    """
    if schedule == "constant":
        return peak
    if schedule != "onecycle":
        raise ConfigError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    up = max(1, round(warmup * total))
    if step < up:
        return peak * (0.1 + 0.9 * step / up)
    t = min(1.0, (step - up) / max(1, total - up))
    low = peak / 1000
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * t))


def lr_schedule(schedule: str, total: int, peak: float) -> Callable[[int], float] | None:
    """``step -> learning rate`` for ``schedule`` (None for a constant rate: nothing to set)."""
    if schedule == "constant":
        return None
    lr_at(0, total, peak, schedule)  # an unknown schedule fails here, before training starts

    def lr(step: int) -> float:
        return lr_at(step, total, peak, schedule)

    return lr


# --------------------------------------------------------------------------- the step body


@contextlib.contextmanager
def autocast(device_type: str, dtype: torch.dtype | None) -> Iterator[None]:
    """bf16 autocast when ``dtype`` is set; nothing otherwise."""
    if dtype is None:
        yield
        return
    # cache_enabled=False: a cached cast would be stale inside a replayed CUDA graph.
    with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
        yield


class LowPrecisionWeights:
    """Low-precision copies of a model's conv and linear weights, for its forward to read.

    Under autocast every forward casts each float32 weight to bf16 (a new tensor) and backward
    casts its bf16 gradient back, one operation per weight each way. Here the copies live as
    long as the step: refreshed from the float32 weights in one multi-tensor copy at the start
    of each step, read by the forward (autocast leaves a tensor already in its dtype alone),
    their gradients copied into float32 buffers in one more for Adam. The rounding is the same
    (round to nearest even) at the same points, so the step computes what the autocast step
    computes, bit for bit; the master weights and Adam stay float32.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        self.model = model
        # What autocast casts: the weights and biases that conv and linear layers multiply with
        # (batch norm's stay float32 under autocast, and here too).
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        for prefix, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                for name, p in module.named_parameters(recurse=False):
                    if p.requires_grad and p.dtype == torch.float32:
                        self.names.append(f"{prefix}.{name}" if prefix else name)
                        self.params.append(p)
        with torch.no_grad():
            self.copies = [p.detach().to(dtype).requires_grad_() for p in self.params]
            self.grads = [torch.empty_like(p) for p in self.params]
        self.by_name = dict(zip(self.names, self.copies, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's forward on the copies, refreshed from the float32 weights first."""
        with torch.no_grad():
            torch._foreach_copy_(self.copies, self.params)
        for c in self.copies:
            c.grad = None
        return torch.func.functional_call(self.model, self.by_name, (x,))

    @torch.no_grad()
    def pass_gradients(self) -> None:
        """The copies' gradients, as float32, become the weights' gradients."""
        used = [i for i, c in enumerate(self.copies) if c.grad is not None]
        if used:
            torch._foreach_copy_([self.grads[i] for i in used], [self.copies[i].grad for i in used])
        for i, p in enumerate(self.params):
            p.grad = self.grads[i] if self.copies[i].grad is not None else None


def step_body(
    model: nn.Module,
    optimizer: Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    amp_dtype: torch.dtype | None,
    weights: LowPrecisionWeights | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """One optimisation step on a float batch; returns the (detached) loss. The only copy.

    ``weights``: the forward reads these low-precision copies of the conv and linear weights.
    ``label_smoothing``: the recipe's (``loss_fn``).
    """
    # Gradients set to None, so backward writes them rather than adding to them (a CUDA graph
    # records that once, and it skips a pass of zero-filling).
    optimizer.zero_grad(set_to_none=True)
    with autocast(x.device.type, amp_dtype):
        logits = model(x) if weights is None else weights.forward(x)
        loss = loss_fn(logits, y, label_smoothing)
    loss.backward()
    if weights is not None:
        weights.pass_gradients()
    optimizer.step()
    return loss.detach()


def make_step(
    model: nn.Module,
    optimizer: Optimizer,
    *,
    amp_dtype: torch.dtype | None = None,
    lr: Callable[[int], float] | None = None,
    start_step: int = 0,
    weights: LowPrecisionWeights | None = None,
    label_smoothing: float = 0.0,
) -> Step:
    """The eager step; ``lr(step)`` sets the learning rate before each step."""
    counter = [start_step]

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if lr is not None:
            value = lr(counter[0])
            for group in optimizer.param_groups:
                group["lr"] = value
        counter[0] += 1
        return step_body(model, optimizer, x, y, amp_dtype, weights, label_smoothing)

    return step


def build_step(
    model: nn.Module,
    optimizer: Optimizer,
    plan: StepPlan,
    *,
    lr: Callable[[int], float] | None = None,
    start_step: int = 0,
    graph_factory: Callable[[], Graph] | None = None,
    label_smoothing: float = 0.0,
) -> Step:
    """The step a run uses, as its plan says: eager, or a CUDA graph captured on first use."""
    if plan.channels_last:
        match_state_layout(optimizer)
    if plan.freed_memory_kept and not keep_freed_memory():  # only slower, so a warning
        log.warning("the C allocator did not take the settings to keep freed memory")
    if plan.cuda_graph or graph_factory is not None:
        if lr is not None:
            raise ConfigError("a CUDA graph replays a constant learning rate: no schedule")
        return LazyGraphedStep(
            model,
            optimizer,
            amp_dtype=plan.autocast_dtype,
            graph_factory=graph_factory,
            label_smoothing=label_smoothing,
        )
    weights = None
    if plan.bf16_weights and plan.autocast_dtype is not None:
        weights = LowPrecisionWeights(model, plan.autocast_dtype)
    return make_step(
        model,
        optimizer,
        amp_dtype=plan.autocast_dtype,
        lr=lr,
        start_step=start_step,
        weights=weights,
        label_smoothing=label_smoothing,
    )


# --------------------------------------------------------------------------- CUDA graphs


class Graph(Protocol):
    """What a captured step needs from a graph: capture once, replay many times."""

    def capture(self, fn: Callable[[], None]) -> None: ...

    def replay(self) -> None: ...


class CudaGraph:
    """A ``torch.cuda.CUDAGraph``: the kernels ``fn`` launches, recorded once."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], None]) -> None:
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        self.graph.replay()


class EagerGraph:
    """Runs the captured function again on replay: the CPU stand-in that tests use."""

    def __init__(self) -> None:
        self.fn: Callable[[], None] | None = None
        self.replays = 0

    def capture(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def replay(self) -> None:
        if self.fn is None:
            raise RuntimeError("replay before capture")
        self.replays += 1
        self.fn()


class GraphedStep:
    """A whole training step captured once and replayed: forward, backward and Adam.

    Inputs are copied into static buffers, then the graph replays on them. Capture needs a few
    warm-up steps (cuDNN picks kernels, Adam creates its state); they run on the first batch and
    are then undone (weights, buffers, optimizer state and RNG restored) so the run trains on
    exactly the steps it would have taken without a graph. Constant learning rate only.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        amp_dtype: torch.dtype | None = None,
        graph: Graph | None = None,
        warmup: int = 3,
        label_smoothing: float = 0.0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype
        self.label_smoothing = label_smoothing
        self.device = x.device
        self.static_x = x.detach().clone()
        self.static_y = y.detach().clone()
        self.static_loss: torch.Tensor | None = None
        self.graph = graph if graph is not None else CudaGraph()
        self._warm_up(warmup)
        optimizer.zero_grad(set_to_none=True)  # gradients then live in the graph's memory
        self.graph.capture(self._body)

    def _body(self) -> None:
        loss = self._step()
        if self.static_loss is None:
            self.static_loss = loss
        else:  # eager stand-in: keep the same buffer, as a replayed graph does
            self.static_loss.copy_(loss)

    def _step(self) -> torch.Tensor:
        return step_body(
            self.model,
            self.optimizer,
            self.static_x,
            self.static_y,
            self.amp_dtype,
            label_smoothing=self.label_smoothing,
        )

    def _warm_up(self, steps: int) -> None:
        saved = _Snapshot(self.model, self.optimizer, self.device)
        stream = torch.cuda.Stream() if self.device.type == "cuda" else None
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream())
        with ctx:
            for _ in range(steps):
                self._step()
        if stream is not None:
            torch.cuda.current_stream().wait_stream(stream)
        saved.restore()
        self.static_loss = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        if self.static_loss is None:
            raise RuntimeError("the graph was never captured")
        return self.static_loss.clone()  # the buffer is overwritten by the next replay


class _Snapshot:
    """Weights, buffers, optimizer state and RNG, to undo warm-up steps in place."""

    def __init__(self, model: nn.Module, optimizer: Optimizer, device: torch.device):
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.tensors = [t.detach().clone() for t in self._model_tensors()]
        self.state = {
            id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
            for p, st in optimizer.state.items()
        }
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def _model_tensors(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

    @torch.no_grad()
    def restore(self) -> None:
        # In place: the graph is captured on these very tensors afterwards.
        for t, saved in zip(self._model_tensors(), self.tensors, strict=True):
            t.copy_(saved)
        for p, st in self.optimizer.state.items():
            old = self.state.get(id(p), {})
            for k, v in st.items():
                if not isinstance(v, torch.Tensor):
                    if k in old:
                        st[k] = old[k]
                elif k in old:
                    v.copy_(old[k])
                else:  # created by the warm-up: Adam's fresh state is all zeros (step 0)
                    v.zero_()
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)


class LazyGraphedStep:
    """Captures a ``GraphedStep`` on the first batch it sees (the static shapes come from it)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        *,
        amp_dtype: torch.dtype | None = None,
        graph_factory: Callable[[], Graph] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype
        self.graph_factory = graph_factory
        self.label_smoothing = label_smoothing
        self.step: GraphedStep | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.step is None:
            graph = self.graph_factory() if self.graph_factory is not None else None
            self.step = GraphedStep(
                self.model,
                self.optimizer,
                x,
                y,
                amp_dtype=self.amp_dtype,
                graph=graph,
                label_smoothing=self.label_smoothing,
            )
        return self.step(x, y)
