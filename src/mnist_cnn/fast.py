"""Fast training steps: the same function as the plain step, computed with less overhead.

What the fast path does, by device (the recipe and its meaning never change):

- everywhere: Adam's fused kernel (one pass over each parameter instead of ~10 element-wise
  ops), batches gathered from a uint8 copy of the training split that stays on the device, the
  epoch's order computed once per epoch instead of once per step;
- CPU: channels-last tensors (oneDNN's preferred layout), bf16 autocast only where the processor
  computes bf16 natively (AVX-512-BF16 / AMX); elsewhere fp32;
- CUDA: bf16 autocast (fp32 master weights), and one whole training step (forward, backward,
  Adam) captured in a CUDA graph and replayed, so a step costs one launch instead of ~100.

The plain step (``train.make_train_step``) stays the reference; tests compare the two.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import nn

from .datasets import to_float
from .errors import ConfigError
from .model import loss_fn

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("constant", "onecycle")

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- what the device offers


def native_bf16(device: torch.device) -> bool:
    """True where ``device`` computes bf16 matrix products natively (not emulated in fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    ``auto`` uses bf16 where it is native and fp32 elsewhere; ``bf16`` where it is not native
    is refused, since emulated bf16 is slower than fp32 and less accurate.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or device.type not in ("cpu", "cuda"):
        return None
    native = native_bf16(device)
    if precision == "bf16" and not native:
        raise ConfigError(
            f"--precision bf16 asked for, but this {device.type.upper()} has no native bf16; "
            "use --precision auto or fp32"
        )
    return torch.bfloat16 if native else None


def use_cuda_graph(device: torch.device) -> bool:
    """CUDA graphs pay off where a step is many small kernel launches: on CUDA."""
    return device.type == "cuda"


# --------------------------------------------------------------------------- optimizer


def make_adam(
    params: Any, lr: float, device: torch.device, *, fast: bool, weight_decay: float = 0.0
) -> torch.optim.Adam:
    """Adam; on the fast path its fused kernel (and capturable on CUDA, for CUDA graphs)."""
    if not fast or device.type not in ("cpu", "cuda"):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    extra: dict[str, Any] = {"fused": True}
    if use_cuda_graph(device):
        extra["capturable"] = True
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)


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


# --------------------------------------------------------------------------- batches


class BatchSource:
    """Training batches gathered on the device from the uint8 split: a function of (seed, step).

    The order is ``train.epoch_order`` (so the fast and plain paths see the same batches); each
    epoch's order, and with ``shift`` its per-image shifts of up to ±``shift`` pixels, is drawn
    once and kept on the device. Returns float (B, 1, 28, 28) in [0, 1] and int64 labels.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        seed: int,
        batch_size: int,
        order: Callable[[int, int, int], torch.Tensor],
        shift: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.images = images  # (N, H, W) uint8, on the device
        self.labels = labels
        self.seed = seed
        self.batch_size = batch_size
        self.order = order
        self.shift = shift
        self.channels_last = channels_last
        self.per_epoch = len(images) // batch_size
        self._epoch = -1
        self._perm = self._dx = self._dy = torch.empty(0)
        h, w = images.shape[-2:]
        dev = images.device
        self._rows = torch.arange(h, device=dev)
        self._cols = torch.arange(w, device=dev)

    def _load_epoch(self, epoch: int) -> None:
        dev = self.images.device
        self._perm = self.order(self.seed, epoch, len(self.images)).to(dev)
        if self.shift:
            # A separate stream of random numbers, so shifts never disturb the data order.
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7_777_777)
            d = torch.randint(-self.shift, self.shift + 1, (2, len(self.images)), generator=gen)
            self._dy, self._dx = d[0].to(dev), d[1].to(dev)
        self._epoch = epoch

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._load_epoch(epoch)
        sl = slice(pos * self.batch_size, (pos + 1) * self.batch_size)
        idx = self._perm[sl]
        x = self._shifted(idx, self._dy[sl], self._dx[sl]) if self.shift else self.images[idx]
        x = to_float(x).unsqueeze(1)  # (B, 1, H, W)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]

    def _shifted(self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` moved by (dy, dx) pixels each, zeros shifted in: one gather, uint8."""
        s = self.shift
        padded = nn.functional.pad(self.images[idx], (s, s, s, s))  # (B, H+2s, W+2s)
        rows = (self._rows + s - dy[:, None])[:, :, None]  # (B, H, 1)
        cols = (self._cols + s - dx[:, None])[:, None, :]  # (B, 1, W)
        b = torch.arange(len(idx), device=idx.device)[:, None, None]
        return padded[b, rows, cols]


# --------------------------------------------------------------------------- the step


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    amp_dtype: torch.dtype | None = None,
    lr: Callable[[int], float] | None = None,
    start_step: int = 0,
) -> Step:
    """One optimisation step (eager); ``lr(step)`` sets the learning rate before each step."""
    device_type = next(model.parameters()).device.type
    counter = [start_step]

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if lr is not None:
            value = lr(counter[0])
            for group in optimizer.param_groups:
                group["lr"] = value
        counter[0] += 1
        with _autocast(device_type, amp_dtype):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


@contextlib.contextmanager
def _autocast(device_type: str, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    # cache_enabled=False: a cached cast would be stale inside a replayed CUDA graph.
    with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
        yield


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
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        amp_dtype: torch.dtype | None = None,
        graph: Graph | None = None,
        warmup: int = 3,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype
        self.device = x.device
        self.static_x = x.detach().clone()
        self.static_y = y.detach().clone()
        self.static_loss: torch.Tensor | None = None
        self.graph = graph if graph is not None else CudaGraph()
        self._warm_up(warmup)
        optimizer.zero_grad(set_to_none=True)  # gradients then live in the graph's memory
        self.graph.capture(self._body)

    def _body(self) -> None:
        # Gradients are None here, so backward writes them rather than adding to them: a CUDA
        # graph records that once; the eager stand-in needs it on every replay.
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(self.device.type, self.amp_dtype):
            loss = loss_fn(self.model(self.static_x), self.static_y)
        loss.backward()
        self.optimizer.step()
        if self.static_loss is None:
            self.static_loss = loss.detach()
        else:  # eager stand-in: keep the same buffer, as a replayed graph does
            self.static_loss.copy_(loss.detach())

    def _warm_up(self, steps: int) -> None:
        saved = _Snapshot(self.model, self.optimizer, self.device)
        stream = torch.cuda.Stream() if self.device.type == "cuda" else None
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream())
        with ctx:
            for _ in range(steps):
                self.optimizer.zero_grad(set_to_none=True)
                with _autocast(self.device.type, self.amp_dtype):
                    loss = loss_fn(self.model(self.static_x), self.static_y)
                loss.backward()
                self.optimizer.step()
        if stream is not None:
            torch.cuda.current_stream().wait_stream(stream)
        saved.restore()
        self.static_loss = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        assert self.static_loss is not None  # set by capture
        return self.static_loss.clone()  # the buffer is overwritten by the next replay


class _Snapshot:
    """Weights, buffers, optimizer state and RNG, to undo warm-up steps in place."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
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
        optimizer: torch.optim.Optimizer,
        *,
        amp_dtype: torch.dtype | None = None,
        graph_factory: Callable[[], Graph] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype
        self.graph_factory = graph_factory
        self.step: GraphedStep | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.step is None:
            graph = self.graph_factory() if self.graph_factory is not None else None
            self.step = GraphedStep(
                self.model, self.optimizer, x, y, amp_dtype=self.amp_dtype, graph=graph
            )
        return self.step(x, y)


def prepare_model(model: nn.Module, device: torch.device, *, fast: bool) -> nn.Module:
    """Move ``model`` to ``device``; on the fast CPU path in channels-last layout."""
    model = model.to(device)
    if fast and device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout.

    State loaded from a checkpoint is contiguous (NCHW) while channels-last weights are not;
    an element-wise optimizer over tensors of different layouts would round differently from
    one that never stopped, and resume would no longer be exact.
    """
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def build_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    fast: bool,
    precision: str = "auto",
    lr: Callable[[int], float] | None = None,
    start_step: int = 0,
    graphs: bool = True,
) -> Step:
    """The step function a run uses: plain eager, fast eager, or a captured CUDA graph."""
    if not fast:
        return make_step(model, optimizer, lr=lr, start_step=start_step)
    match_state_layout(optimizer)
    amp = autocast_dtype(device, precision)
    if graphs and use_cuda_graph(device) and lr is None:
        return LazyGraphedStep(model, optimizer, amp_dtype=amp)
    return make_step(model, optimizer, amp_dtype=amp, lr=lr, start_step=start_step)
