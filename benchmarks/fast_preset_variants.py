"""The fast preset and its variants on the validation split: does a change pay for its time?

    .venv/bin/python benchmarks/fast_preset_variants.py [--conv3 64] [--pool3] [--seeds 0 1 2]
        [--lr 2e-2] [--batch-size 128] [--steps 860] [--label-smoothing 0.1] [--shift 1]
        [--recompute-bn N] [--beta2 0.999] [--weight-decay 0] [--channels C1 C2]

Trains ``--preset fast`` once per seed, one thread, with the settings given, and prints each
seed's validation and test accuracy and CPU seconds, then the means. Choose on validation; the
test set is only reported. ``--conv3 C`` sets the third conv stage's channels (3×3, batch norm
and ReLU at 7×7; 64, the preset's, by default; ``--conv3 0``: no third stage, the preset before
2026-11-30); with ``--pool3`` that stage is max-pooled to 3×3 (a network this script builds).
``--channels C1 C2`` sets the first two stages' channels (16 and 32).
``--recompute-bn N`` also reports each trained network with its batch-norm statistics
recomputed (a plain average with the final weights, not training's running one) over N
training images drawn without the shift. ``--beta2`` and ``--weight-decay`` change Adam's
second-moment decay and its (L2) weight decay, which the preset does not expose.
MNIST from $MNIST_CNN_DATA. MNIST_CNN_DRY_RUN=1 checks the arguments only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mnist_cnn import model as model_module  # noqa: E402
from mnist_cnn import train as train_module  # noqa: E402
from mnist_cnn.datasets import default_data_root, load_dataset  # noqa: E402
from mnist_cnn.errors import MnistCnnError  # noqa: E402
from mnist_cnn.model import ModelConfig, flatten  # noqa: E402
from mnist_cnn.train import preset_config, train  # noqa: E402

ARCH = "fast-cnn-pool3"  # registered by this script only


def pooled_variant(conv3: int) -> type[nn.Module]:
    """The fast preset's network with its third stage of ``conv3`` channels max-pooled to 3×3
    (unpooled, it is the library's own network)."""

    class FastCNNConv3(nn.Module):
        def __init__(self, config: ModelConfig) -> None:
            super().__init__()
            self.config = c = config
            k, pad = c.kernel_size, c.kernel_size // 2
            self.conv1 = nn.Conv2d(1, c.conv1_channels, k, padding=pad, bias=False)
            self.bn1 = nn.BatchNorm2d(c.conv1_channels)
            self.conv2 = nn.Conv2d(c.conv1_channels, c.conv2_channels, k, padding=pad, bias=False)
            self.bn2 = nn.BatchNorm2d(c.conv2_channels)
            self.conv3 = nn.Conv2d(c.conv2_channels, conv3, k, padding=pad, bias=False)
            self.bn3c = nn.BatchNorm2d(conv3)
            self.fc1 = nn.Linear(conv3 * 3 * 3, c.hidden, bias=False)
            self.bn3 = nn.BatchNorm1d(c.hidden)
            self.fc2 = nn.Linear(c.hidden, c.num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.view(-1, 1, 28, 28)
            h = F.relu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
            h = F.relu(self.bn2(F.max_pool2d(self.conv2(h), 2)))
            h = self.conv3(h)
            h = F.relu(self.bn3c(F.max_pool2d(h, 2)))
            h = F.relu(self.bn3(self.fc1(flatten(h))))
            return self.fc2(F.dropout(h, self.config.dropout, self.training))

    return FastCNNConv3


def adam_with(beta2: float, weight_decay: float):
    """``make_optimizer`` for train(), with Adam's ``beta2`` and weight decay replaced (the
    fused kernel or torch.optim's, as the plan says)."""
    from mnist_cnn.adam import FusedAdam

    def make(params, lr, plan, **_ignored):
        if plan.fused_adam and plan.device_type == "cpu":
            return FusedAdam(params, lr=lr, betas=(0.9, beta2), weight_decay=weight_decay)
        return torch.optim.Adam(params, lr=lr, betas=(0.9, beta2), weight_decay=weight_decay)

    return make


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conv3", type=int, default=64, help="third stage's channels (0: none)")
    p.add_argument("--pool3", action="store_true", help="max-pool the third stage to 3×3")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--shift", type=int, default=None)
    p.add_argument("--recompute-bn", type=int, default=0, metavar="N")
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--channels", type=int, nargs=2, default=None, metavar=("C1", "C2"))
    args = p.parse_args()
    if args.conv3 < 0 or (args.pool3 and not args.conv3):
        p.error("--conv3 must be 0 (no third stage) or a number of channels (needed by --pool3)")
    if args.recompute_bn < 0:
        p.error("--recompute-bn must be 0 (off) or a number of training images")
    if not 0 <= args.beta2 < 1 or args.weight_decay < 0:
        p.error("--beta2 must lie in [0, 1) and --weight-decay be 0 or more")
    name = f"conv3 {args.conv3}{' pooled' if args.pool3 else ''}" if args.conv3 else "no conv3"
    if os.environ.get("MNIST_CNN_DRY_RUN"):
        print(f"would train {name} for seeds {args.seeds}")
        return 0
    torch.set_num_threads(1)  # CPU seconds are the fair measure on a shared machine
    try:
        _train_all(args, name)
    except MnistCnnError as err:  # no MNIST, a setting train refuses: one line
        print(f"fast_preset_variants: {err}", file=sys.stderr)
        return 1
    return 0


def _train_all(args: argparse.Namespace, name: str) -> None:
    mnist = load_dataset("mnist", default_data_root(), download=False)
    base = preset_config(
        "fast",
        lr=args.lr,
        batch_size=args.batch_size,
        steps=args.steps,
        label_smoothing=args.label_smoothing,
        shift=args.shift,
    )
    if (args.beta2, args.weight_decay) != (0.999, 0.0):
        name += f", beta2 {args.beta2:g}, weight decay {args.weight_decay:g}"
        train_module.make_optimizer = adam_with(args.beta2, args.weight_decay)
    if args.channels:
        c1, c2 = args.channels
        name += f", channels {c1}/{c2}"
        base = dataclasses.replace(
            base, model=dataclasses.replace(base.model, conv1_channels=c1, conv2_channels=c2)
        )
    if args.pool3:
        model_module.ARCHITECTURES[ARCH] = pooled_variant(args.conv3)
        base = dataclasses.replace(
            base, model=dataclasses.replace(base.model, arch=ARCH, conv3_channels=0)
        )
    else:
        base = dataclasses.replace(
            base, model=dataclasses.replace(base.model, conv3_channels=args.conv3)
        )
    rows = []
    for seed in args.seeds:
        logs: list[dict] = []
        with tempfile.TemporaryDirectory() as out:
            config = dataclasses.replace(base, seed=seed, device="cpu")
            start = time.process_time()
            result = train(config, Path(out) / "run", data=mnist, on_log=logs.append)
            cpu = time.process_time() - start
            recomputed = ""
            if args.recompute_bn:
                val, test = _recomputed_bn(Path(out) / "run", mnist, args.recompute_bn, seed)
                recomputed = f"; batch norm recomputed: validation {val:.4f}, test {test:.4f}"
        rows.append((logs[-1]["val_accuracy"], result.test.accuracy, cpu))
        print(
            f"{name}, seed {seed}: validation {rows[-1][0]:.4f}, test {rows[-1][1]:.4f}, "
            f"{cpu:.1f} CPU s{recomputed}",
            flush=True,
        )
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(3)]
    print(f"{name}: mean validation {mean[0]:.4f}, test {mean[1]:.4f}, {mean[2]:.1f} CPU s")


def _recomputed_bn(run: Path, mnist, n: int, seed: int) -> tuple[float, float]:
    """Validation and test accuracy of the run's network once its batch-norm statistics are
    an average over ``n`` training images (in batches of 500, train mode, no gradients)."""
    from mnist_cnn.checkpoint import load_model
    from mnist_cnn.datasets import to_float
    from mnist_cnn.evaluate import evaluate

    model, _ = load_model(run)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    order = torch.randperm(len(mnist.train), generator=torch.Generator().manual_seed(seed))
    images = mnist.train.images[order[:n]]
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), 500):
            model(to_float(images[i : i + 500]).unsqueeze(1))
    model.eval()
    return tuple(
        evaluate(model, split.images, split.labels, batch_size=1000).accuracy
        for split in (mnist.val, mnist.test)
    )


if __name__ == "__main__":
    sys.exit(main())
