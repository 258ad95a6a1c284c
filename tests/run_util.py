"""A tiny dataset and network for run-folder tests: runs of a few steps that cost milliseconds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mnist_cnn.datasets import DATASETS, MNISTLike, Split
from mnist_cnn.model import ModelConfig
from mnist_cnn.train import TrainConfig

# The seed's architecture (with dropout, so the saved RNG state matters), a few channels wide.
TINY_MODEL = ModelConfig(conv1_channels=2, conv2_channels=4, kernel_size=3, hidden=8, dropout=0.5)


def tiny_data(name: str = "mnist", n_train: int = 64, n_eval: int = 16, seed: int = 0) -> MNISTLike:
    """Random images with random labels: enough to train on, cheap to evaluate."""
    gen = torch.Generator().manual_seed(seed)

    def split(split_name: str, n: int) -> Split:
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        return Split(split_name, images, torch.randint(0, 10, (n,), generator=gen))

    return MNISTLike(
        name=name,
        classes=DATASETS[name].classes,
        train=split("train", n_train),
        val=split("val", n_eval),
        test=split("test", n_eval),
    )


def tiny_config(**changes: Any) -> TrainConfig:
    """Six steps of batch 8, a log record and a checkpoint every two; fp32, so bit-exact."""
    base = TrainConfig(
        steps=6,
        batch_size=8,
        lr=1e-3,
        seed=1,
        device="cpu",
        log_every=2,
        checkpoint_every=2,
        eval_batch_size=16,
        precision="fp32",
        model=TINY_MODEL,
    )
    return dataclasses.replace(base, **changes)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
