"""Shared fixtures, each built once per test run (``scope="session"``).

Real MNIST (needs ``$MNIST_CNN_DATA/mnist``; a test that asks for it fails, never skips):
``data_root``, ``mnist``, ``small_mnist``, and ``trained_run`` (600 steps on it, about 98%).

Generated data (no download, no MNIST; a few seconds in all), for tests where accuracy on real
digits is not the point: ``tiny_root`` (a data root with ``mnist/`` and ``fashion-mnist/``),
``tiny_data`` (its mnist in memory, small validation split), ``tiny_run`` (the seed network
trained briefly on it) and ``tiny_fast_run`` (the fast preset's network, likewise).

The page tests: ``browser`` (a headless Chromium, one per test) and ``server_url``
(``trained_run`` served by a real ``mnist-cnn serve`` process, one per worker).

Tiers: a test that uses ``trained_run`` is marked ``slow`` here, as is any test marked by
hand (real-MNIST training, the browser); ``make test-fast`` deselects ``slow``.

Under pytest-xdist (``make test`` runs two workers) each worker computes with one thread, and
the run folders and data roots above are built once for the whole test run: the first worker
to need one builds it under a file lock in the run's shared temporary folder, the others wait
for it and read it. Tests only read them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... under pytest-xdist


def _xdist_controller(config: pytest.Config) -> bool:
    """The process that hands tests to xdist's workers and runs none itself."""
    return WORKER is None and bool(getattr(config.option, "numprocesses", None))


def pytest_configure(config: pytest.Config) -> None:
    """Tests measure behaviour, not speed: keep them on the CPU and repeatable. Two workers on
    two cores compute with a thread each; two threads each would fight over the cores.

    xdist's controller never imports torch (1.7 s here, before it starts the workers)."""
    if _xdist_controller(config):
        return
    import torch

    torch.set_num_threads(1 if WORKER else min(2, torch.get_num_threads()))


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once per test run, across workers.

    Without xdist it is a fresh temporary folder. Under xdist it lives in the folder all workers
    share; the first to ask builds it while holding a lock, and a build that failed half-way is
    started afresh by the next (its folder holds no ``.built`` mark).
    """
    if WORKER is None:
        folder = factory.mktemp(name)
        build(folder)
        return folder
    shared = factory.getbasetemp().parent / "built-once"
    shared.mkdir(exist_ok=True)
    folder = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def _check_digits(run: Path, data) -> None:
    """Calibrate the run's digit check now, once, on ``data`` (a few thousand images: seconds;
    serving or predicting would calibrate on all 60,000 of MNIST's training and validation
    digits, minutes on two cores) and store it in the run: tests then share the result."""
    from mnist_cnn.checkpoint import load_model
    from mnist_cnn.digitness import scorer_for_run

    model, _ = load_model(run)
    scorer_for_run(run, model, data=data)


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
    import dataclasses

    from mnist_cnn.datasets import Split
    from mnist_cnn.train import preset_config, train

    # One log record at step 0 and one at the end, on 1,000 validation images (a pass over
    # 5,000 costs as much as 50 steps). Its own test accuracy is a check that it learned, on
    # every fifth test digit (2,000 from both halves of the test set, whose first half is the
    # easier): all 10,000 took 6 s of one thread. Tests that need more digits read `mnist`.
    config = preset_config(
        "seed", steps=600, lr=1e-3, seed=0, device="cpu", log_every=600, checkpoint_every=600
    )
    val = Split("val", mnist.val.images[:1000], mnist.val.labels[:1000])
    test = Split("test", mnist.test.images[::5], mnist.test.labels[::5])
    # Its digit check from 3,000 training and the same 1,000 validation digits.
    few = dataclasses.replace(
        mnist, train=Split("train", mnist.train.images[:3000], mnist.train.labels[:3000]), val=val
    )

    def build(folder: Path) -> None:
        data = dataclasses.replace(mnist, val=val, test=test)
        result = train(config, folder / "run", data=data, curves=False)  # no test draws them
        assert result.test.accuracy > 0.96, result.test.accuracy
        _check_digits(folder / "run", few)

    return built_once(tmp_path_factory, "trained", build) / "run"


@pytest.fixture(scope="session")
def small_mnist(mnist):
    """Real MNIST with small validation and test splits, for tests where accuracy is not the
    point: evaluation then costs little next to the steps under test."""
    import dataclasses

    from mnist_cnn.datasets import Split

    def head(split: Split, n: int) -> Split:
        return Split(split.name, split.images[:n], split.labels[:n])

    return dataclasses.replace(mnist, val=head(mnist.val, 500), test=head(mnist.test, 500))


# The order in which xdist's file scheduler (``--dist loadfile --no-loadscope-reorder``, as
# `make test` runs it) hands out test files: the longest first, so that the two workers end
# together. The first file needs ``trained_run``, so its worker starts building it at once; the
# second does not and runs for longer than that build, so the other worker never waits for it.
# Ranked by each file's total from `pytest --durations=0` on the 2-core Xeon (summed by hand;
# rerank when a file grows); files not listed follow, in collection order.
LONGEST_FIRST = (
    "test_explain.py",
    "test_train.py",
    "test_distributed.py",
    "test_preprocess.py",
    "test_export_web.py",
    "test_inspect.py",
    "test_hostile_inputs.py",
    "test_tour.py",
    "test_serve_explain_live.py",
    "test_serve_live.py",
    "test_predict.py",
    "test_other_dataset.py",
    "test_docs.py",
    "test_report.py",
    "test_serve_phone.py",
    "test_serve_memory.py",
    "test_cli.py",
    "test_serve.py",
    "test_export.py",
    "test_fast_runs.py",
    "test_rundir.py",
    "test_digitness.py",
    "test_evaluate.py",
    "test_card.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need ``trained_run`` (real-MNIST training) belong to the slow tier; files
    run longest first (``LONGEST_FIRST``)."""
    for item in items:
        if "trained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps the rest


# --------------------------------------------------------------------------- generated data

TINY_TRAIN = 1_000  # the first twelfth (83) becomes the validation split: 917 left to train on
TINY_TEST = 101  # odd: two processes evaluate shards of 51 and 50


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with generated ``mnist/`` and ``fashion-mnist/`` folders (gzip IDX files).

    Each class is a bright block in its own place over faint noise (``idx_util``), so a network
    learns it in a few dozen steps; 10% of the labels are random, so it still makes mistakes.
    1,000 training images (83 of them the validation split) and 101 test images.
    """
    from .idx_util import write_dataset

    def build(root: Path) -> None:
        for seed, name in enumerate(("mnist", "fashion-mnist")):
            write_dataset(
                root / name, TINY_TRAIN, TINY_TEST, seed=seed, learnable=True, label_noise=0.1
            )

    return built_once(tmp_path_factory, "tiny-data", build)


@pytest.fixture(scope="session")
def tiny_data(tiny_root: Path):
    """``tiny_root``'s mnist in memory: 917 training, 83 validation and 101 test images."""
    from mnist_cnn.datasets import load_dataset

    return load_dataset("mnist", tiny_root, download=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_data) -> Path:
    """A run folder of the seed network (full size) after 20 steps on ``tiny_data``.

    For tests that need *a* trained run of the seed network (its files, its pictures, its
    activations), not one that reads handwriting. Test accuracy is well above chance (0.88, as
    after 40 steps: the 10% of random labels bound it).
    """
    from mnist_cnn.train import preset_config, train

    config = preset_config(
        "seed", steps=20, lr=1e-3, seed=0, device="cpu", log_every=10, checkpoint_every=10
    )

    def build(folder: Path) -> None:
        result = train(config, folder / "run", data=tiny_data)
        assert result.test.accuracy > 0.5, result.test.accuracy
        _check_digits(folder / "run", tiny_data)

    return built_once(tmp_path_factory, "tiny-run", build) / "run"


@pytest.fixture(scope="session")
def tiny_fast_run(tmp_path_factory: pytest.TempPathFactory, tiny_data) -> Path:
    """A run folder of the fast preset's network (batch norm, 3×3 kernels) after 30 steps on
    ``tiny_data``."""
    from mnist_cnn.train import preset_config, train

    config = preset_config(
        "fast", steps=30, batch_size=32, seed=0, device="cpu", log_every=10, checkpoint_every=30
    )

    def build(folder: Path) -> None:
        result = train(config, folder / "run", data=tiny_data, curves=False)
        assert result.test.accuracy > 0.3, result.test.accuracy

    return built_once(tmp_path_factory, "tiny-fast-run", build) / "run"


# --------------------------------------------------------------------------- the browser


@pytest.fixture
def browser():
    """A headless Chromium for one test. Not shared longer: while Playwright's sync API is open
    it leaves an asyncio loop marked running in the thread, and other tests' ``asyncio.run``
    (the load test's clients, a server started in-process) would fail."""
    import shutil

    from .browser_util import CHROMIUM, CHROMIUM_ARGS, INSTALL_HINT

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright is not installed: {INSTALL_HINT}")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(f"no Chromium at {CHROMIUM}: {INSTALL_HINT}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def server_url(trained_run: Path):
    """``mnist-cnn serve`` of ``trained_run`` in a child process, one per worker for the whole
    run; the URL it listens on (the tests that use it only read from it)."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from load_serve import server_process

    with server_process(str(trained_run)) as url:
        yield url


def _hardware_summary() -> list[str]:
    """Which precision paths ran on this hardware and which could not run here."""
    import torch

    from mnist_cnn.device import cpu_kernels
    from mnist_cnn.step import BF16_SWITCH, bf16_support

    cpu = torch.device("cpu")
    native, said = bf16_support(cpu)
    kernels = cpu_kernels()  # and the libraries held below them (benchmarks/as_avx2.sh)
    if native and BF16_SWITCH not in said:
        bf16 = "bf16 tests ran on native bf16"
    else:
        bf16 = f"no native bf16 ({said}): bf16 tests ran emulated, forced by {BF16_SWITCH}=native"
    not_here = ["CUDA graph capture (its logic ran with an eager stand-in)", "CUDA bf16", "NCCL"]
    if torch.cuda.is_available():
        not_here = []
    if not torch.backends.mps.is_available():
        not_here.append("MPS")
    lines = [f"precision: CPU kernels {kernels}; {bf16}; fp32 tests ran in fp32"]
    if not_here:
        lines.append(f"not run on this hardware (no such device): {', '.join(not_here)}")
    return lines


_WORKER_SUMMARY: list[str] = []  # the controller's copy of what a worker reported


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker reports the hardware summary to the controller (which has no torch)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["hardware_summary"] = _hardware_summary()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # xdist: a worker finished
    if not _WORKER_SUMMARY:
        _WORKER_SUMMARY.extend(getattr(node, "workeroutput", {}).get("hardware_summary", []))


def pytest_terminal_summary(terminalreporter) -> None:
    """Say which precision paths ran on this hardware and which could not run here."""
    if _xdist_controller(terminalreporter.config):
        lines = _WORKER_SUMMARY or ["precision: no worker reported its hardware"]
    else:
        lines = _hardware_summary()
    for line in lines:
        terminalreporter.write_line(line)
