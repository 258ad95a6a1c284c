"""Shared fixtures: the real MNIST folder and one small trained run for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# Tests measure behaviour, not speed: keep them on the CPU and repeatable.
torch.set_num_threads(min(2, torch.get_num_threads()))


def _data_root() -> Path:
    from mnist_cnn.datasets import default_data_root

    return default_data_root()  # $MNIST_CNN_DATA, else the user's cache folder


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding ``mnist/`` with the four IDX files; fails (never skips) without it."""
    root = _data_root()
    missing = [
        name
        for name in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
        if not (root / "mnist" / name).is_file()
    ]
    if missing:
        pytest.fail(
            f"MNIST not found: put {', '.join(missing)} in {root / 'mnist'}, run "
            "'mnist-cnn download', or set MNIST_CNN_DATA to the folder that holds mnist/"
        )
    return root


@pytest.fixture(scope="session")
def mnist(data_root: Path):
    """The real MNIST, split 55,000 / 5,000 / 10,000."""
    from mnist_cnn.datasets import load_dataset

    return load_dataset("mnist", data_root, download=False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, mnist) -> Path:
    """A run folder with a usefully trained seed network (about 98% test accuracy).

    The seed's network with a 10× learning rate for 600 steps: quick on two cores, and accurate
    enough for tests that need a model that recognises digits.
    """
    from mnist_cnn.train import preset_config, train

    config = preset_config(
        "seed", steps=600, lr=1e-3, seed=0, device="cpu", log_every=200, checkpoint_every=600
    )
    out = tmp_path_factory.mktemp("runs") / "trained"
    result = train(config, out, data=mnist)
    assert result.test.accuracy > 0.96, result.test.accuracy
    return out


@pytest.fixture(scope="session")
def small_mnist(mnist):
    """Real MNIST with small validation and test splits, for tests where accuracy is not the
    point: evaluation then costs little next to the steps under test."""
    import dataclasses

    from mnist_cnn.datasets import Split

    def head(split: Split, n: int) -> Split:
        return Split(split.name, split.images[:n], split.labels[:n])

    return dataclasses.replace(mnist, val=head(mnist.val, 500), test=head(mnist.test, 500))


def pytest_terminal_summary(terminalreporter) -> None:
    """Say which precision paths ran on this hardware and which could not run here."""
    from mnist_cnn.step import BF16_SWITCH, bf16_support

    cpu = torch.device("cpu")
    native, said = bf16_support(cpu)
    kernels = torch.backends.cpu.get_cpu_capability()
    if native and BF16_SWITCH not in said:
        bf16 = "bf16 tests ran on native bf16"
    else:
        bf16 = f"no native bf16 ({said}): bf16 tests ran emulated, forced by {BF16_SWITCH}=native"
    not_here = ["CUDA graph capture (its logic ran with an eager stand-in)", "CUDA bf16", "NCCL"]
    if torch.cuda.is_available():
        not_here = []
    if not torch.backends.mps.is_available():
        not_here.append("MPS")
    write = terminalreporter.write_line
    write(f"precision: CPU kernels {kernels}; {bf16}; fp32 tests ran in fp32")
    if not_here:
        write(f"not run on this hardware (no such device): {', '.join(not_here)}")
