"""The seed's "Deep MNIST" network, its initialisation, and a numerically stable loss.

conv 5×5×32 SAME, ReLU → max-pool 2 → conv 5×5×64 SAME, ReLU → max-pool 2 → flatten 7·7·64 →
fc 1024, ReLU → dropout → fc 10. Weights truncated normal (std 0.1, cut at 2 std as TensorFlow's
``truncated_normal`` does), biases 0.1. 3,274,634 parameters.

The forward pass can hand back its intermediate activations by name, so inspection tools read
exactly what prediction computed instead of re-implementing the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .datasets import IMAGE_SIZE, NUM_CLASSES
from .errors import ConfigError

ACTIVATIONS = ("conv1", "pool1", "conv2", "pool2", "fc1", "logits")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; stored in every checkpoint."""

    arch: str = "deep-mnist"
    conv1_channels: int = 32
    conv2_channels: int = 64
    kernel_size: int = 5
    hidden: int = 1024
    conv3_channels: int = 0  # fast-cnn only: a third conv stage at 7×7 (0: none)
    dropout: float = 0.5  # probability of dropping (the seed's keep_prob 0.5)
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        # Checked here, before any layer is sized from these numbers: a checkpoint's metadata
        # reaches this constructor, and hidden=250000 would otherwise allocate gigabytes.
        for name, (low, high) in _INT_LIMITS.items():
            value = getattr(self, name)
            if type(value) is not int:  # bool is an int subclass: refused too
                raise ConfigError(
                    f"model setting {name} must be a whole number, got {_short(value)}"
                )
            if not low <= value <= high:
                raise ConfigError(f"model setting {name} must lie in {low}..{high}, got {value}")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd (SAME padding), got {self.kernel_size}")
        if type(self.dropout) not in (int, float) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must lie in [0, 1), got {_short(self.dropout)}")
        if not isinstance(self.arch, str):
            raise ConfigError(f"model setting arch must be a name, got {_short(self.arch)}")
        if self.conv3_channels and self.arch != "fast-cnn":
            raise ConfigError(
                f"conv3_channels is a fast-cnn setting; the {_short(self.arch)} network has "
                "two conv stages (set it to 0)"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"model settings must be a JSON object, got {_short(data)}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            names = ", ".join(_short(k, 40) for k in sorted(unknown)[:5])
            raise ConfigError(f"unknown model setting(s): {names}")
        return cls(**data)


# Generous bounds: 16× the seed's sizes. The largest network they admit (hidden 16,384 with
# conv2 1,024) has 0.8 G parameters; anything larger is not a model of this project.
_INT_LIMITS = {
    "conv1_channels": (1, 512),
    "conv2_channels": (1, 1024),
    "kernel_size": (1, 27),
    "hidden": (1, 16_384),
    "conv3_channels": (0, 1_024),
    "num_classes": (2, 1_000),
}


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about untrusted input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DeepMNIST(nn.Module):
    """The seed's CNN. Input: float (N, 1, 28, 28), (N, 28, 28) or (N, 784) in [0, 1]."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        pad = c.kernel_size // 2  # SAME padding for an odd kernel at stride 1
        self.conv1 = nn.Conv2d(1, c.conv1_channels, c.kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(c.conv1_channels, c.conv2_channels, c.kernel_size, padding=pad)
        side = IMAGE_SIZE // 4  # two 2×2 poolings: 28 → 14 → 7
        self.fc1 = nn.Linear(c.conv2_channels * side * side, c.hidden)
        self.fc2 = nn.Linear(c.hidden, c.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The seed's initialisation: weights N(0, 0.1²) truncated at ±0.2, biases 0.1."""
        for module in (self.conv1, self.conv2, self.fc1, self.fc2):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=0.1, a=-0.2, b=0.2)
            nn.init.constant_(module.bias, 0.1)

    def forward(
        self, x: torch.Tensor, return_activations: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (N, 10); with ``return_activations`` also a dict name -> tensor."""
        if x.dim() == 2:  # (N, 784), the seed's flat vectors
            x = x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
        elif x.dim() == 3:  # (N, 28, 28)
            x = x.unsqueeze(1)
        acts: dict[str, torch.Tensor] = {}
        keep: Callable[[str, torch.Tensor], torch.Tensor]
        if return_activations:

            def keep(name: str, t: torch.Tensor) -> torch.Tensor:
                acts[name] = t
                return t

        else:

            def keep(name: str, t: torch.Tensor) -> torch.Tensor:
                return t

        if return_activations:
            h = keep("conv1", F.relu(self.conv1(x)))  # (N, 32, 28, 28)
            h = keep("pool1", F.max_pool2d(h, 2))  # (N, 32, 14, 14)
            h = keep("conv2", F.relu(self.conv2(h)))  # (N, 64, 14, 14)
            h = keep("pool2", F.max_pool2d(h, 2))  # (N, 64, 7, 7)
        else:
            # The same values and gradients, bit for bit: ReLU and max commute exactly (ReLU is
            # monotonic and neither rounds), and ReLU's gradient reaches a window's maximum
            # only where it is positive either way. Pooling first runs ReLU and its gradient
            # on a quarter of the values.
            h = F.relu(F.max_pool2d(self.conv1(x), 2))
            h = F.relu(F.max_pool2d(self.conv2(h), 2))
        h = keep("fc1", F.relu(self.fc1(flatten(h))))  # (N, 1024)
        h = dropout(h, self.config.dropout, self.training)
        logits = keep("logits", self.fc2(h))  # (N, 10)
        return (logits, acts) if return_activations else logits


# The fast preset's network (FastCNN's default). 16/32 channels: on the validation split, two
# epochs of this beat one epoch of 32/64 channels (99.26% vs 99.20%) at three quarters of the
# arithmetic. The third stage of 64 channels at 7×7: +0.07% on validation over six seeds, for
# about a quarter more time per command. See docs/speed.md.
FAST_CNN = ModelConfig(
    arch="fast-cnn",
    conv1_channels=16,
    conv2_channels=32,
    conv3_channels=64,
    kernel_size=3,
    hidden=128,
    dropout=0.0,
)


class FastCNN(nn.Module):
    """The fast preset's network: the seed's two conv/pool stages, batch-normalised and smaller.

    conv k×k×c1 (no bias) → max-pool 2, BN, ReLU → conv k×k×c2 → max-pool 2, BN, ReLU →
    [conv k×k×c3 at 7×7, BN, ReLU, when ``conv3_channels`` c3 > 0] → fc ``hidden`` (no bias),
    BN, ReLU → dropout → fc 10. With the fast preset's c1=16, c2=32, c3=64, k=3, hidden=128:
    426,362 parameters and 2.3 M multiply-adds per image (the seed's: 13.9 M). Batch norm is
    what lets it train at a high learning rate in two epochs. Same activation names as the
    seed's network (and "conv3" when it has that stage), so every inspection tool works on it.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or FAST_CNN
        pad = c.kernel_size // 2
        self.conv1 = nn.Conv2d(1, c.conv1_channels, c.kernel_size, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(c.conv1_channels)
        self.conv2 = nn.Conv2d(
            c.conv1_channels, c.conv2_channels, c.kernel_size, padding=pad, bias=False
        )
        self.bn2 = nn.BatchNorm2d(c.conv2_channels)
        last = c.conv2_channels
        if c.conv3_channels:
            # Named apart from bn3 (fc1's batch norm), so two-stage checkpoints keep their keys.
            self.conv3 = nn.Conv2d(last, c.conv3_channels, c.kernel_size, padding=pad, bias=False)
            self.bn_conv3 = nn.BatchNorm2d(c.conv3_channels)
            last = c.conv3_channels
        side = IMAGE_SIZE // 4
        self.fc1 = nn.Linear(last * side * side, c.hidden, bias=False)
        self.bn3 = nn.BatchNorm1d(c.hidden)
        self.fc2 = nn.Linear(c.hidden, c.num_classes)

    def forward(
        self, x: torch.Tensor, return_activations: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (N, 10); with ``return_activations`` also a dict name -> tensor."""
        if x.dim() == 2:
            x = x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
        elif x.dim() == 3:
            x = x.unsqueeze(1)
        acts: dict[str, torch.Tensor] = {}
        # Pooling before batch norm and ReLU: the per-element work runs on a quarter of the
        # values. The raw convolution outputs are signed and unnormalised, so "conv1"/"conv2"
        # are reported as what the next stage reads: the maps through the same batch norm and
        # ReLU, at full resolution (computed only when asked for). Max-pooling them gives
        # exactly "pool1"/"pool2" in every channel whose batch-norm scale is positive.
        h = self.conv1(x)  # (N, c1, 28, 28)
        if return_activations:
            acts["conv1"] = F.relu(self.bn1(h))
        h = acts["pool1"] = F.relu(self.bn1(F.max_pool2d(h, 2)))  # (N, c1, 14, 14)
        h = self.conv2(h)  # (N, c2, 14, 14)
        if return_activations:
            acts["conv2"] = F.relu(self.bn2(h))
        h = acts["pool2"] = F.relu(self.bn2(F.max_pool2d(h, 2)))  # (N, c2, 7, 7)
        if self.config.conv3_channels:
            h = acts["conv3"] = F.relu(self.bn_conv3(self.conv3(h)))  # (N, c3, 7, 7)
        h = acts["fc1"] = F.relu(self.bn3(self.fc1(flatten(h))))  # (N, hidden)
        h = dropout(h, self.config.dropout, self.training)
        logits = acts["logits"] = self.fc2(h)  # (N, 10)
        return (logits, acts) if return_activations else logits


class _FlattenChannelsLast(torch.autograd.Function):
    """``x.flatten(1)`` of a channels-last map whose gradient flows back channels-last."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.contiguous().view(x.shape[0], -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


def dropout(h: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(h, p, training)``: each value zeroed with probability ``p``, the rest scaled
    by 1/(1 − p).

    On the CPU the mask comes from ``torch.rand`` (uniform < p is dropped): PyTorch's CPU
    dropout draws its Bernoulli mask one value at a time, 0.8 ms for the seed's 50 × 1,024
    fc1 outputs against 0.2 ms for as many uniforms (4% of a fast bf16 step). The same
    distribution of masks and the same arithmetic (the input times mask/(1 − p), in its
    dtype); other devices keep their own fused kernel.
    """
    if not training or p == 0 or h.device.type != "cpu":
        return F.dropout(h, p, training)
    noise = (torch.rand(h.shape) >= p).to(h.dtype).div_(1 - p)
    return h * noise


def flatten(h: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C·H·W) in (c, h, w) order, as ``h.flatten(1)``: the same values.

    On a channels-last map being trained, the gradient is handed back channels-last too.
    Plain ``flatten`` hands it back in NCHW, and max-pooling's backward then converts it and
    its own output between layouts: 3-4 times the cost of that backward on the CPU.
    """
    if (
        h.requires_grad
        and torch.is_grad_enabled()
        and h.dim() == 4
        and not h.is_contiguous()
        and h.is_contiguous(memory_format=torch.channels_last)
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    ):
        return _FlattenChannelsLast.apply(h)
    return h.flatten(1)


ARCHITECTURES: dict[str, type[nn.Module]] = {"deep-mnist": DeepMNIST, "fast-cnn": FastCNN}


def build_model(config: ModelConfig | None = None) -> nn.Module:
    """Build the network a config names (``arch``)."""
    config = config or ModelConfig()
    try:
        cls = ARCHITECTURES[config.arch]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise ConfigError(f"unknown architecture {config.arch!r}: choose one of {known}") from None
    return cls(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def loss_fn(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy on logits, computed through log-softmax.

    The seed wrote ``-sum(y * log(softmax(logits)))``: once a probability underflows to 0 the log
    is -inf and the loss NaN. ``cross_entropy`` uses the log-sum-exp form and never does.
    The mean (not the seed's sum) keeps the loss comparable across batch sizes; with Adam the
    update is the same either way, as Adam divides each gradient by its own running scale.
    ``label_smoothing`` (the fast preset's 0.1): the target gives each class ``s / 10`` and the
    true one ``1 - s`` more, so the network is not pushed towards ever larger logits.
    """
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
