"""The fast path computes the same function as the plain step (fast.py)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from mnist_cnn import fast
from mnist_cnn.errors import ConfigError
from mnist_cnn.model import DeepMNIST, FastCNN, ModelConfig
from mnist_cnn.train import PRESETS, batch_indices, epoch_order, make_train_step

DEVICE = torch.device("cpu")
SMALL_SEED_NET = ModelConfig(conv1_channels=8, conv2_channels=16, hidden=32)  # quick: same layers
SMALL_FAST_NET = ModelConfig(
    arch="fast-cnn", conv1_channels=8, conv2_channels=16, kernel_size=3, hidden=32, dropout=0.25
)


def _batches(n: int, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(size, 1, 28, 28, generator=gen), torch.randint(0, 10, (size,), generator=gen))
        for _ in range(n)
    ]


def _twins(cls: type, config: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    a = cls(config)
    b = cls(config)
    b.load_state_dict(a.state_dict())
    return a, b


def _run(step, batches, rng_seed: int = 1) -> list[float]:
    torch.manual_seed(rng_seed)  # the same dropout masks for both paths
    return [step(x, y).item() for x, y in batches]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float) -> None:
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cls,config", [(DeepMNIST, SMALL_SEED_NET), (FastCNN, SMALL_FAST_NET)])
def test_fp32_fast_step_matches_plain_step(cls: type, config: ModelConfig) -> None:
    plain, quick = _twins(cls, config)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    quick = fast.prepare_model(quick, DEVICE, fast=True)
    assert quick.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    quick_opt = fast.make_adam(quick.parameters(), 1e-3, DEVICE, fast=True)
    assert quick_opt.defaults["fused"]
    batches = _batches(3)
    fast_batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    losses_plain = _run(make_train_step(plain, plain_opt), batches)
    step = fast.build_train_step(quick, quick_opt, DEVICE, fast=True, precision="fp32")
    losses_fast = _run(step, fast_batches)
    assert losses_fast == pytest.approx(losses_plain, rel=1e-5)
    _assert_same_weights(plain, quick, atol=1e-5)


def test_bf16_step_matches_fp32_within_bf16_tolerance() -> None:
    ref, low = _twins(FastCNN, dataclasses.replace(SMALL_FAST_NET, dropout=0.0))
    x, y = _batches(1, size=32)[0]
    with torch.no_grad():
        ref_logits = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_logits = low(x)
    assert low_logits.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: about 2-3 decimal digits.
    torch.testing.assert_close(low_logits.float(), ref_logits, atol=0.1, rtol=0.05)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    low_opt = torch.optim.Adam(low.parameters(), lr=1e-3)
    ref_loss = _run(fast.make_step(ref, ref_opt), [(x, y)])
    low_loss = _run(fast.make_step(low, low_opt, amp_dtype=torch.bfloat16), [(x, y)])
    assert low_loss == pytest.approx(ref_loss, rel=0.03)
    assert all(p.dtype == torch.float32 for p in low.parameters())  # fp32 master weights
    _assert_same_weights(ref, low, atol=2e-3)  # one Adam step moves each weight by ~lr


@pytest.mark.parametrize("cls,config", [(DeepMNIST, SMALL_SEED_NET), (FastCNN, SMALL_FAST_NET)])
def test_graphed_step_logic_matches_plain_steps(cls: type, config: ModelConfig) -> None:
    """The CUDA-graph wrapper (warm-up undone, static buffers) with an eager stand-in graph."""
    plain, graphed = _twins(cls, config)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    graphed_opt = torch.optim.Adam(graphed.parameters(), lr=1e-3)
    graphs: list[fast.EagerGraph] = []

    def factory() -> fast.EagerGraph:
        graphs.append(fast.EagerGraph())
        return graphs[-1]

    step = fast.LazyGraphedStep(graphed, graphed_opt, graph_factory=factory)
    batches = _batches(3)
    losses_plain = _run(make_train_step(plain, plain_opt), batches)
    losses_graphed = _run(step, batches)
    assert len(graphs) == 1 and graphs[0].replays == 3  # captured once, replayed per step
    assert losses_graphed == pytest.approx(losses_plain, rel=1e-6)
    _assert_same_weights(plain, graphed, atol=1e-6)
    assert graphed_opt.state_dict()["state"][0]["step"].item() == 3  # warm-up steps undone


def test_graphed_step_after_resume_keeps_optimizer_state() -> None:
    """Warm-up on a resumed optimizer restores its saved moments, not zeros."""
    plain, graphed = _twins(FastCNN, SMALL_FAST_NET)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    first, rest = _batches(2), _batches(2, seed=1)
    _run(make_train_step(plain, plain_opt), first)
    graphed.load_state_dict(plain.state_dict())
    graphed_opt = torch.optim.Adam(graphed.parameters(), lr=1e-3)
    graphed_opt.load_state_dict(copy.deepcopy(plain_opt.state_dict()))  # no shared tensors
    step = fast.LazyGraphedStep(graphed, graphed_opt, graph_factory=fast.EagerGraph)
    assert _run(step, rest, 5) == pytest.approx(_run(make_train_step(plain, plain_opt), rest, 5))
    _assert_same_weights(plain, graphed, atol=1e-6)


def test_batch_source_follows_the_plain_order() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (70, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (70,), generator=gen)
    source = fast.BatchSource(images, labels, seed=3, batch_size=20, order=epoch_order)
    for step in (0, 2, 3, 7):  # 3 batches per epoch: steps 3 and 7 are in later epochs
        idx = batch_indices(3, step, 20, 70)
        x, y = source(step)
        assert torch.equal(y, labels[idx])
        assert torch.equal(x, images[idx].float().div(255).unsqueeze(1))


def test_batch_source_shifts_whole_images() -> None:
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)
    images[:, 10:18, 10:18] = 255  # a centred square: easy to locate after a shift
    labels = torch.arange(10)
    source = fast.BatchSource(images, labels, seed=0, batch_size=10, order=epoch_order, shift=2)
    x, _ = source(0)
    seen = set()
    for img in x[:, 0]:
        rows = img.sum(1).nonzero()
        cols = img.sum(0).nonzero()
        dy, dx = int(rows[0]) - 10, int(cols[0]) - 10
        assert -2 <= dy <= 2 and -2 <= dx <= 2
        assert img.sum() == 64  # moved, not cropped or stretched
        seen.add((dy, dx))
    assert len(seen) > 1  # each image draws its own shift
    assert torch.equal(source(0)[0], x)  # a pure function of (seed, step)


def test_onecycle_learning_rate() -> None:
    """Warm up to the given peak, then anneal to well below the start: the shape, not the
    constants (warm-up share, start and end fractions) of the schedule."""
    steps, peak_lr = 100, 1e-2
    lrs = [fast.lr_at(s, steps, peak_lr, "onecycle") for s in range(steps)]
    assert max(lrs) == pytest.approx(peak_lr)
    peak = lrs.index(max(lrs))
    assert 0 < peak < steps // 2  # a warm-up, shorter than the way down
    assert lrs[0] < peak_lr / 2
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))  # rises
    assert all(a >= b for a, b in zip(lrs[peak:-1], lrs[peak + 1 :], strict=True))  # falls
    assert lrs[-1] < lrs[0]
    # The schedule stretches with the run: the same fractions of a run twice as long.
    longer = [fast.lr_at(s, 2 * steps, peak_lr, "onecycle") for s in range(0, 2 * steps, 2)]
    assert longer == pytest.approx(lrs, rel=1e-6, abs=1e-9)
    assert fast.lr_schedule("constant", 100, 1e-2) is None
    with pytest.raises(ConfigError):
        fast.lr_schedule("cyclic", 100, 1e-2)


def test_bf16_only_where_native(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fast.autocast_dtype(DEVICE, "fp32") is None
    monkeypatch.setattr(fast, "native_bf16", lambda device: False)
    assert fast.autocast_dtype(DEVICE, "auto") is None
    with pytest.raises(ConfigError, match="no native bf16"):
        fast.autocast_dtype(DEVICE, "bf16")
    monkeypatch.setattr(fast, "native_bf16", lambda device: True)
    assert fast.autocast_dtype(DEVICE, "auto") is torch.bfloat16
    with pytest.raises(ConfigError):
        fast.autocast_dtype(DEVICE, "fp16")


def test_fast_preset_config() -> None:
    """The fast preset: its own network, smaller and cheaper than the seed's, and its own
    schedule; the seed preset stays the tutorial's."""
    from mnist_cnn.model import build_model, count_parameters

    config, seed = PRESETS["fast"], PRESETS["seed"]
    assert config.model.arch == "fast-cnn" and seed.model.arch == "deep-mnist"
    assert config.schedule == "onecycle" and seed.schedule == "constant" and config.fast
    fast_net, seed_net = build_model(config.model), build_model(seed.model)
    assert count_parameters(fast_net) < count_parameters(seed_net) / 10
    # It classifies the same inputs into the same classes.
    x = torch.rand(2, 1, 28, 28)
    assert fast_net.eval()(x).shape == seed_net.eval()(x).shape == (2, 10)
    assert type(config).from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="precision"):
        dataclasses.replace(config, precision="fp8")
    with pytest.raises(ConfigError, match="shift"):
        dataclasses.replace(config, shift=9)
