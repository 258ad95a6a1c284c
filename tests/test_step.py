"""The step plan and the one step body: the fast path computes the plain step's function.

Every comparison says the precision it holds at. fp32: float rounding (fused vs unfused Adam,
channels-last vs NCHW convolutions). bf16: 8 significant bits. The bf16 tests force the bf16
path with the test-only switch (``MNIST_CNN_TEST_BF16=native``), so they run, slowly emulated,
on CPUs without native bf16 too; ``absent`` shows the plan what an AVX2-only CPU shows it.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from mnist_cnn import step as st
from mnist_cnn.errors import ConfigError
from mnist_cnn.model import DeepMNIST, FastCNN, ModelConfig, loss_fn
from mnist_cnn.train import PRESETS

DEVICE = torch.device("cpu")
SMALL_SEED_NET = ModelConfig(conv1_channels=8, conv2_channels=16, hidden=32)  # quick: same layers
SMALL_FAST_NET = ModelConfig(
    arch="fast-cnn", conv1_channels=8, conv2_channels=16, kernel_size=3, hidden=32, dropout=0.25
)
# bf16 keeps 8 significant bits: one rounding is 2^-8 ≈ 0.4% relative; a logit or a loss sums
# hundreds of rounded products, so a few percent of its scale.
BF16_RTOL = 0.05


@pytest.fixture
def bf16_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bf16 path, native or emulated."""
    monkeypatch.setenv(st.BF16_SWITCH, "native")


@pytest.fixture
def avx2_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a CPU without native bf16 (AVX2 only) shows the plan."""
    monkeypatch.setenv(st.BF16_SWITCH, "absent")


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


LR = 1e-3  # the learning rate of the compared steps


def _path(model: torch.nn.Module, plan: st.StepPlan, lr: float = LR):
    model = st.prepare_model(model, plan)
    return model, st.build_step(model, st.make_optimizer(model.parameters(), lr, plan), plan)


def _assert_mostly_within(a: torch.nn.Module, b: torch.nn.Module, atol: float, share: float):
    """All but ``share`` of the float values of the two state dicts within ``atol``."""
    over = total = 0
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        if pa.is_floating_point():
            over += int(((pa - pb).abs() > atol).sum())
            total += pa.numel()
    assert over <= share * total, f"{over} of {total} values differ by more than {atol}"


def _layout(batches, plan: st.StepPlan):
    if not plan.channels_last:
        return batches
    return [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]


# --------------------------------------------------------------------------- the plan


def test_the_plan_follows_what_bf16_the_cpu_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(st.BF16_SWITCH, raising=False)
    hardware = st._hardware_bf16(DEVICE)
    auto = st.resolve_plan(DEVICE)
    assert auto.precision == ("bf16" if hardware else "fp32")
    assert auto.bf16 == ("native" if hardware else "absent")
    assert st.resolve_plan(DEVICE, "fp32").precision == "fp32"
    fast = st.resolve_plan(DEVICE, "fp32")
    assert fast.channels_last and fast.fused_adam and not fast.cuda_graph and not fast.plain
    assert fast.threads == torch.get_num_threads() and fast.hardware
    with pytest.raises(ConfigError, match="unknown precision"):
        st.resolve_plan(DEVICE, "fp16")


def test_avx2_view_computes_in_fp32_and_refuses_bf16(avx2_view: None) -> None:
    plan = st.resolve_plan(DEVICE, "auto")
    assert plan.precision == "fp32" and plan.autocast_dtype is None
    assert plan.bf16.startswith("absent (MNIST_CNN_TEST_BF16")  # recorded, never silent
    with pytest.raises(ConfigError, match="no native bf16"):
        st.resolve_plan(DEVICE, "bf16")
    with pytest.raises(ConfigError, match="no native bf16"):
        st.resolve_plan(DEVICE, "bf16", plain=True)


def test_forced_bf16_and_the_plain_step_honours_precision(bf16_forced: None) -> None:
    assert st.resolve_plan(DEVICE, "auto").autocast_dtype is torch.bfloat16
    plain = st.resolve_plan(DEVICE, "bf16", plain=True)
    assert plain.precision == "bf16"  # --plain-step changes how, never what
    assert not (plain.channels_last or plain.fused_adam or plain.cuda_graph)
    assert "plain eager step, bf16 autocast" in plain.summary()


def test_an_unknown_switch_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(st.BF16_SWITCH, "yes")
    with pytest.raises(ConfigError, match=st.BF16_SWITCH):
        st.resolve_plan(DEVICE)


# --------------------------------------------------------------------------- same function


@pytest.mark.parametrize("cls,config", [(DeepMNIST, SMALL_SEED_NET), (FastCNN, SMALL_FAST_NET)])
def test_fp32_fast_step_matches_plain_step(cls: type, config: ModelConfig) -> None:
    """fp32 against fp32: within float rounding."""
    plain, quick = _twins(cls, config)
    plain_plan = st.resolve_plan(DEVICE, "fp32", plain=True)
    fast_plan = st.resolve_plan(DEVICE, "fp32")
    plain, plain_step = _path(plain, plain_plan)
    quick, fast_step = _path(quick, fast_plan)
    assert quick.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    batches = _batches(3)
    losses_plain = _run(plain_step, batches)
    losses_fast = _run(fast_step, _layout(batches, fast_plan))
    # Float rounding, amplified in one place: Adam divides each gradient by its running scale,
    # so where a gradient is rounding-sized (a unit that hardly fires) the two paths' different
    # summation orders can step that weight apart by up to lr. So: every weight within the
    # steps' reach, almost all within 1e-5, and the losses within what one such weight moves.
    assert losses_fast == pytest.approx(losses_plain, rel=1e-4)
    _assert_same_weights(plain, quick, atol=len(batches) * LR)
    _assert_mostly_within(plain, quick, atol=1e-5, share=1e-3)


def test_bf16_fast_step_matches_bf16_plain_step(bf16_forced: None) -> None:
    """bf16 against bf16 (fused Adam and channels-last vs plain): within bf16 rounding."""
    config = dataclasses.replace(SMALL_FAST_NET, dropout=0.0)
    plain, quick = _twins(FastCNN, config)
    plain_plan = st.resolve_plan(DEVICE, "bf16", plain=True)
    fast_plan = st.resolve_plan(DEVICE, "bf16")
    plain, plain_step = _path(plain, plain_plan)
    quick, fast_step = _path(quick, fast_plan)
    batches = _batches(2, size=16)
    losses_plain = _run(plain_step, batches)
    losses_fast = _run(fast_step, _layout(batches, fast_plan))
    assert losses_fast == pytest.approx(losses_plain, rel=BF16_RTOL)
    assert all(p.dtype == torch.float32 for p in quick.parameters())  # fp32 master weights
    # Two Adam steps at lr 1e-3 move a weight by up to 2e-3 whichever way rounding tips it.
    _assert_same_weights(plain, quick, atol=4e-3)


def test_plan_keeps_bf16_weight_copies_to_the_single_process_bf16_fast_step(
    bf16_forced: None,
) -> None:
    assert st.resolve_plan(DEVICE, "bf16").bf16_weights
    assert "bf16 weight copies" in st.resolve_plan(DEVICE, "bf16").summary()
    assert not st.resolve_plan(DEVICE, "fp32").bf16_weights  # nothing to copy in fp32
    assert not st.resolve_plan(DEVICE, "bf16", plain=True).bf16_weights
    assert not st.resolve_plan(DEVICE, "bf16", distributed=True).bf16_weights  # DDP's hooks


@pytest.mark.parametrize("cls,config", [(DeepMNIST, SMALL_SEED_NET), (FastCNN, SMALL_FAST_NET)])
def test_bf16_weight_copies_compute_the_autocast_step_bit_for_bit(
    bf16_forced: None, cls: type, config: ModelConfig
) -> None:
    """Exact: the copies round as autocast's casts do, at the same points; Adam stays fp32."""
    with_copies, without = _twins(cls, config)
    plan = st.resolve_plan(DEVICE, "bf16")
    assert plan.bf16_weights
    with_copies, step_copies = _path(with_copies, plan)
    without, step_cast = _path(without, dataclasses.replace(plan, bf16_weights=False))
    batches = _layout(_batches(3), plan)
    assert _run(step_copies, batches) == _run(step_cast, batches)  # dropout on: same masks
    for (name, a), b in zip(
        with_copies.state_dict().items(), without.state_dict().values(), strict=True
    ):
        assert a.dtype == b.dtype and torch.equal(a, b), name  # batch-norm statistics too
    # A weight changed outside the step (a checkpoint loaded) is what the next step reads.
    with torch.no_grad():
        for a, b in zip(with_copies.parameters(), without.parameters(), strict=True):
            a.mul_(0.5)
            b.mul_(0.5)
    assert _run(step_copies, batches[:1]) == _run(step_cast, batches[:1])


def test_bf16_step_matches_fp32_within_bf16_tolerance(bf16_forced: None) -> None:
    """bf16 against fp32: the logits and one step, within bf16's 8 significant bits."""
    ref, low = _twins(FastCNN, dataclasses.replace(SMALL_FAST_NET, dropout=0.0))
    x, y = _batches(1, size=32)[0]
    low_plan = st.resolve_plan(DEVICE, "bf16", plain=True)
    with torch.no_grad():
        ref_logits = ref(x)
        with st.autocast("cpu", low_plan.autocast_dtype):
            low_logits = low(x)
    assert low_logits.dtype == torch.bfloat16
    scale = ref_logits.abs().max().item()
    assert (low_logits.float() - ref_logits).abs().max().item() <= BF16_RTOL * scale
    ref, ref_step = _path(ref, st.resolve_plan(DEVICE, "fp32", plain=True))
    low, low_step = _path(low, low_plan)
    assert _run(low_step, [(x, y)]) == pytest.approx(_run(ref_step, [(x, y)]), rel=BF16_RTOL)
    _assert_same_weights(ref, low, atol=2e-3)  # one Adam step moves each weight by ~lr


@pytest.mark.parametrize("cls,config", [(DeepMNIST, SMALL_SEED_NET), (FastCNN, SMALL_FAST_NET)])
def test_graphed_step_logic_matches_plain_steps(cls: type, config: ModelConfig) -> None:
    """The CUDA-graph wrapper (warm-up undone, static buffers) with an eager stand-in graph, fp32:
    the same body, so equal to float rounding of the identical arithmetic (1e-6)."""
    plain, graphed = _twins(cls, config)
    plan = st.resolve_plan(DEVICE, "fp32", plain=True)
    plain_step = st.build_step(plain, torch.optim.Adam(plain.parameters(), lr=1e-3), plan)
    graphed_opt = torch.optim.Adam(graphed.parameters(), lr=1e-3)
    graphs: list[st.EagerGraph] = []

    def factory() -> st.EagerGraph:
        graphs.append(st.EagerGraph())
        return graphs[-1]

    step = st.build_step(graphed, graphed_opt, plan, graph_factory=factory)
    batches = _batches(3)
    losses_plain = _run(plain_step, batches)
    losses_graphed = _run(step, batches)
    assert len(graphs) == 1 and graphs[0].replays == 3  # captured once, replayed per step
    assert losses_graphed == pytest.approx(losses_plain, rel=1e-6)
    _assert_same_weights(plain, graphed, atol=1e-6)
    assert graphed_opt.state_dict()["state"][0]["step"].item() == 3  # warm-up steps undone
    with pytest.raises(ConfigError, match="constant learning rate"):
        st.build_step(graphed, graphed_opt, plan, lr=lambda s: 0.1, graph_factory=factory)


@pytest.mark.parametrize("path", ["plain", "fast", "graphed"])
def test_every_step_computes_the_recipes_label_smoothing(path: str) -> None:
    """The loss a step returns is the smoothed loss of the model it started from (fp32, 1e-6),
    whichever way the step runs: a path that dropped the setting returns the plain
    cross-entropy, thousands of times the tolerance away."""
    model, _ = _twins(FastCNN, dataclasses.replace(SMALL_FAST_NET, dropout=0.0))
    before = copy.deepcopy(model)
    x, y = _batches(1, size=16)[0]
    plan = st.resolve_plan(DEVICE, "fp32", plain=path == "plain")
    model = st.prepare_model(model, plan)
    optimizer = st.make_optimizer(model.parameters(), LR, plan)
    factory = st.EagerGraph if path == "graphed" else None
    step = st.build_step(model, optimizer, plan, graph_factory=factory, label_smoothing=0.3)
    got = step(_layout([(x, y)], plan)[0][0], y).item()
    logits = before(x)
    expected = loss_fn(logits, y, label_smoothing=0.3).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert abs(expected - loss_fn(logits, y).item()) > 1e-2  # the check tells them apart


def test_graphed_step_after_resume_keeps_optimizer_state() -> None:
    """Warm-up on a resumed optimizer restores its saved moments, not zeros (fp32, 1e-6)."""
    plain, graphed = _twins(FastCNN, SMALL_FAST_NET)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    plain_step = st.make_step(plain, plain_opt)
    first, rest = _batches(2), _batches(2, seed=1)
    _run(plain_step, first)
    graphed.load_state_dict(plain.state_dict())
    graphed_opt = torch.optim.Adam(graphed.parameters(), lr=1e-3)
    graphed_opt.load_state_dict(copy.deepcopy(plain_opt.state_dict()))  # no shared tensors
    step = st.LazyGraphedStep(graphed, graphed_opt, graph_factory=st.EagerGraph)
    assert _run(step, rest, 5) == pytest.approx(_run(plain_step, rest, 5))
    _assert_same_weights(plain, graphed, atol=1e-6)


# --------------------------------------------------------------------------- schedule, presets


def test_onecycle_learning_rate() -> None:
    """Warm up to the given peak, then anneal to well below the start: the shape, not the
    constants (warm-up share, start and end fractions) of the schedule."""
    steps, peak_lr = 100, 1e-2
    lrs = [st.lr_at(s, steps, peak_lr, "onecycle") for s in range(steps)]
    assert max(lrs) == pytest.approx(peak_lr)
    peak = lrs.index(max(lrs))
    assert 0 < peak < steps // 2  # a warm-up, shorter than the way down
    assert lrs[0] < peak_lr / 2
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))  # rises
    assert all(a >= b for a, b in zip(lrs[peak:-1], lrs[peak + 1 :], strict=True))  # falls
    assert lrs[-1] < lrs[0]
    # The schedule stretches with the run: the same fractions of a run twice as long.
    longer = [st.lr_at(s, 2 * steps, peak_lr, "onecycle") for s in range(0, 2 * steps, 2)]
    assert longer == pytest.approx(lrs, rel=1e-6, abs=1e-9)
    assert st.lr_schedule("constant", 100, 1e-2) is None
    with pytest.raises(ConfigError):
        st.lr_schedule("cyclic", 100, 1e-2)


def test_fast_preset_config() -> None:
    """The fast preset: its own network, smaller and cheaper than the seed's, and its own
    schedule; the seed preset stays the tutorial's."""
    from mnist_cnn.model import build_model, count_parameters

    config, seed = PRESETS["fast"], PRESETS["seed"]
    assert config.model.arch == "fast-cnn" and seed.model.arch == "deep-mnist"
    assert config.schedule == "onecycle" and seed.schedule == "constant" and config.fast
    fast_net, seed_net = build_model(config.model), build_model(seed.model)
    assert count_parameters(fast_net) < count_parameters(seed_net) / 5  # 426,362 vs 3.27 M
    # It classifies the same inputs into the same classes.
    x = torch.rand(2, 1, 28, 28)
    assert fast_net.eval()(x).shape == seed_net.eval()(x).shape == (2, 10)
    assert type(config).from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="precision"):
        dataclasses.replace(config, precision="fp8")
    with pytest.raises(ConfigError, match="shift"):
        dataclasses.replace(config, shift=9)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="label smoothing must lie in"):
            dataclasses.replace(config, label_smoothing=bad)
    with pytest.raises(ConfigError, match="label_smoothing must be float"):
        type(config).from_dict({**config.to_dict(), "label_smoothing": "0.1"})
    older = {k: v for k, v in config.to_dict().items() if k != "label_smoothing"}
    assert type(config).from_dict(older).label_smoothing == 0.0  # as such runs were trained


def test_the_fast_cpu_plan_keeps_freed_memory_where_glibc_can(monkeypatch) -> None:
    from mnist_cnn import device as dev

    here = dev.can_keep_freed_memory()
    plan = st.resolve_plan(DEVICE, "fp32")
    assert plan.freed_memory_kept == here
    assert ("freed memory kept" in plan.summary()) == here
    assert not st.resolve_plan(DEVICE, "fp32", plain=True).freed_memory_kept  # a plain loop's
    monkeypatch.setattr(st, "can_keep_freed_memory", lambda: False)  # macOS, Windows, musl
    plan = st.resolve_plan(DEVICE, "fp32")
    assert not plan.freed_memory_kept and "freed memory" not in plan.summary()
    applied: list[bool] = []
    monkeypatch.setattr(st, "keep_freed_memory", lambda: applied.append(True) or True)
    model = st.prepare_model(FastCNN(SMALL_FAST_NET), plan)
    st.build_step(model, st.make_optimizer(model.parameters(), 1e-3, plan), plan)
    assert not applied  # not asked for: not applied
    plan = dataclasses.replace(plan, freed_memory_kept=True)
    st.build_step(model, st.make_optimizer(model.parameters(), 1e-3, plan), plan)
    assert applied == [True]
