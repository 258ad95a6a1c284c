"""The seed network's fast step with and without bf16 weight copies, and the plain step, side by
side in one run: what the copies save, as a ratio that background load falls on alike. Also two
variants tried and kept out of the step (docs/speed.md): conv1 (one input channel) computed as
an im2col matrix product, and the linear layers' weight gradients multiplied from a contiguous
copy of the transposed output gradient.

    .venv/bin/python benchmarks/step_variants.py [--rounds 10] [--steps 10] [--threads N]
        [--network seed|fast]

Each round times ``--steps`` steps of each variant in turn on one fixed batch (no data feed:
the steps alone; 50 images for the seed network, 128 for the fast preset's, ``--network
fast``), and prints the median per-step time and its ratio to the plain step. Needs a CPU with
native bf16 (or ``MNIST_CNN_TEST_BF16=native``, slowly emulated).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mnist_cnn.errors import ConfigError  # noqa: E402
from mnist_cnn.model import ModelConfig, build_model  # noqa: E402
from mnist_cnn.step import build_step, make_optimizer, prepare_model, resolve_plan  # noqa: E402
from mnist_cnn.train import preset_config  # noqa: E402


class Im2colConv1(nn.Conv2d):
    """conv1 (one input channel, stride 1, same padding) as one matrix product: the k×k windows
    of the padded image as rows (N·H·W, k²) times the weights (k², C). Its output is NHWC in
    memory, i.e. channels-last, as the fast step's maps are. Only while gradients are on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        n, _, h, w = x.shape
        k, pad = self.kernel_size[0], self.padding[0]
        padded = F.pad(x.reshape(n, h, w), (pad, pad, pad, pad))
        cols = padded.unfold(1, k, 1).unfold(2, k, 1).reshape(n * h * w, k * k)
        weight = self.weight.reshape(self.out_channels, k * k).t()
        out = torch.addmm(self.bias, cols, weight) if self.bias is not None else cols @ weight
        return out.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)


class _ContiguousGrad(torch.autograd.Function):
    """``F.linear`` on bf16 tensors whose weight gradient is ``grad.t().contiguous() @ x``, the
    product autograd computes from the transposed view ``grad.t()``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_b = grad.sum(0) if ctx.has_bias else None
        return grad.mm(weight), grad.t().contiguous().mm(x), grad_b


class ContiguousGradLinear(nn.Linear):
    """nn.Linear through ``_ContiguousGrad`` under CPU autocast (its casts done as autocast
    does them, so that their gradients are cast back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or not torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu")
        bias = None if self.bias is None else self.bias.to(dtype)
        return _ContiguousGrad.apply(x.to(dtype), self.weight.to(dtype), bias)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--network", choices=["seed", "fast"], default="seed")
    args = parser.parse_args()
    if min(args.rounds, args.steps) < 1 or args.threads < 0:
        parser.error("--rounds and --steps must be at least 1, --threads at least 0")
    if os.environ.get("MNIST_CNN_DRY_RUN"):  # the docs test: start-up and arguments only
        print(f"would time {args.rounds} rounds of {args.steps} steps per variant")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    try:
        fast = resolve_plan(device, "bf16")
    except ConfigError as err:  # bf16 only emulated here: one line
        print(f"step_variants: {err}", file=sys.stderr)
        return 2
    variants = {
        "plain step (fp32, NCHW, Adam)": resolve_plan(device, "fp32", plain=True),
        "fast bf16, autocast casts": dataclasses.replace(fast, bf16_weights=False),
        "fast bf16, bf16 weight copies": fast,
        "copies + contiguous linear grads": fast,
        "copies + conv1 as im2col matmul": fast,
    }
    config, batch = (
        (ModelConfig(), 50) if args.network == "seed" else (preset_config("fast").model, 128)
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    steps = {}
    for name, plan in variants.items():
        torch.manual_seed(0)
        model = build_model(config)
        if "im2col" in name:
            model.conv1.__class__ = Im2colConv1  # same parameters, another forward
        if "linear grads" in name:
            for layer in model.modules():
                if type(layer) is nn.Linear:
                    layer.__class__ = ContiguousGradLinear
        model = prepare_model(model, plan)
        step = build_step(model, make_optimizer(model.parameters(), 1e-4, plan), plan)
        xb = x.contiguous(memory_format=torch.channels_last) if plan.channels_last else x
        for _ in range(3):  # warm-up: oneDNN picks its kernels
            step(xb, y)
        steps[name] = (step, xb)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, (step, xb) in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(xb, y)
            times[name].append((time.perf_counter() - t0) / args.steps)
    print(
        f"{args.network} network, batch {batch}, {fast.summary()}; "
        f"{args.rounds} rounds of {args.steps} steps, median per step"
    )
    base = statistics.median(times[next(iter(times))])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:33s} {1e3 * med:7.1f} ms   {base / med:5.2f}× the plain step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
