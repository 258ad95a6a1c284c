import dataclasses

import pytest
import torch

from mnist_cnn.model import (
    ACTIVATIONS,
    DeepMNIST,
    ModelConfig,
    count_parameters,
    dropout,
    flatten,
    loss_fn,
)


def test_parameter_count_is_the_seeds():
    assert count_parameters(DeepMNIST()) == 3_274_634


def test_initialisation_is_truncated_normal_and_constant_bias():
    torch.manual_seed(0)
    model = DeepMNIST()
    for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
        w = layer.weight.detach()
        assert w.abs().max() <= 0.2  # truncated at two standard deviations
        assert torch.all(layer.bias == 0.1)
    # fc1 has 3.2 M samples: its spread is that of N(0, 0.1²) cut at ±2σ (std ≈ 0.088).
    assert abs(model.fc1.weight.std().item() - 0.0880) < 0.002
    assert abs(model.fc1.weight.mean().item()) < 0.001


def test_activations_come_from_the_prediction_pass():
    torch.manual_seed(0)
    model = DeepMNIST().eval()
    x = torch.rand(3, 1, 28, 28)
    logits, acts = model(x, return_activations=True)
    assert tuple(acts) == ACTIVATIONS
    shapes = {name: tuple(t.shape) for name, t in acts.items()}
    assert shapes == {
        "conv1": (3, 32, 28, 28),
        "pool1": (3, 32, 14, 14),
        "conv2": (3, 64, 14, 14),
        "pool2": (3, 64, 7, 7),
        "fc1": (3, 1024),
        "logits": (3, 10),
    }
    assert torch.equal(logits, acts["logits"])
    assert torch.equal(logits, model(x))
    # The seed's other input shapes give the same answer.
    assert torch.equal(model(x.view(3, 784)), logits)
    assert torch.equal(model(x.view(3, 28, 28)), logits)
    # conv1 is ReLU(conv(x) + b), as the seed's h_conv1.
    ref = torch.relu(torch.nn.functional.conv2d(x, model.conv1.weight, model.conv1.bias, padding=2))
    torch.testing.assert_close(acts["conv1"], ref)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = DeepMNIST()
    x = torch.rand(4, 1, 28, 28)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.5, 0.2])
def test_dropout_is_f_dropouts_function(p, dtype):
    """The CPU dropout drops a share p (within 4 standard errors over 100,000 values), scales
    what it keeps by 1/(1 − p) as F.dropout does in the input's dtype (compared exactly), passes
    gradients through the kept values only, and repeats its mask under the same seed."""
    torch.manual_seed(1)
    h = (torch.rand(100, 1000) + 0.5).to(dtype).requires_grad_()
    out = dropout(h, p, True)
    kept = out != 0
    share = 1 - kept.float().mean().item()
    assert abs(share - p) < 4 * (p * (1 - p) / h.numel()) ** 0.5, share
    scale = torch.tensor(1 / (1 - p), dtype=dtype)  # F.dropout's noise: mask / (1 - p) in dtype
    assert out.dtype == dtype and torch.equal(out[kept], (h * scale)[kept])
    out.sum().backward()
    assert torch.equal(h.grad, kept.to(dtype) * scale)
    torch.manual_seed(1)
    torch.rand(100, 1000)  # the draw that made h
    assert torch.equal(dropout(h, p, True), out)
    assert torch.equal(dropout(h, p, False), h)  # evaluation: untouched


def test_loss_is_stable_where_the_seeds_formula_is_not():
    logits = torch.tensor([[200.0, -200.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 2])
    naive = -(torch.nn.functional.one_hot(labels, 3) * torch.log(torch.softmax(logits, 1))).sum()
    assert not torch.isfinite(naive)  # softmax underflows to 0 and log(0) = -inf
    loss = loss_fn(logits, labels)
    assert torch.isfinite(loss)
    expected = (400.0 + torch.log(torch.tensor(3.0))) / 2  # mean of the two examples
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("s", [0.1, 0.3])
def test_label_smoothing_aims_at_the_smoothed_target(s: float) -> None:
    """With smoothing s the loss is least (zero gradient) where the softmax is the target: the
    true class 1 - s + s/10, every other s/10. Without it, those logits are still pushed apart
    (the smoothing ignored, or mixed in with the wrong weight, fails here)."""
    labels = torch.tensor([3, 7])
    target = torch.full((2, 10), s / 10).scatter(1, labels[:, None], 1 - s + s / 10)
    logits = target.log().clone().requires_grad_()
    loss_fn(logits, labels, label_smoothing=s).backward()
    assert logits.grad.abs().max() < 1e-6
    logits.grad = None
    loss_fn(logits, labels).backward()  # the seed's loss wants the true class's logit higher
    assert (logits.grad[[0, 1], labels] < -0.01).all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_training_forward_has_the_seed_orders_gradients_exactly(channels_last):
    """Training pools before its ReLUs and flattens channels-last maps by its own rule: the
    loss and every gradient are the seed's order's (ReLU, then pool, then flatten), bit for bit."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = DeepMNIST(ModelConfig(conv1_channels=8, conv2_channels=16, hidden=32))
    x = torch.rand(6, 1, 28, 28)
    x[:, :, :10] = 0  # blank rows: pooling windows where every value is the bias, ties
    labels = torch.arange(6)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def seed_order(m, x):
        h = F.max_pool2d(F.relu(m.conv1(x)), 2)
        h = F.max_pool2d(F.relu(m.conv2(h)), 2)
        return m.fc2(F.relu(m.fc1(h.flatten(1))))  # dropout left out: model in eval mode

    model.eval()
    grads = []
    for forward in (seed_order, lambda m, x: m(x)):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(forward(model, x), labels)
        loss.backward()
        grads.append([loss.detach(), *(p.grad for p in model.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_flatten_hands_a_channels_last_gradient_back_channels_last():
    h = torch.rand(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    flat = flatten(h)
    assert torch.equal(flat, h.detach().flatten(1))  # (c, h, w) order, as nn.Flatten
    (flat * torch.arange(60.0)).sum().backward()
    assert h.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(h.grad, torch.arange(60.0).view(1, 3, 4, 5).expand(2, -1, -1, -1))
    plain = torch.rand(2, 3, 4, 5, requires_grad=True)
    assert flatten(plain).grad_fn.name() == "ViewBackward0"  # plain maps: plain flatten


def test_fast_preset_has_a_third_stage_and_two_stage_files_still_load(tmp_path) -> None:
    """The fast preset's network has conv3 (426,362 parameters); a file written before that
    setting existed (no "conv3_channels" in its metadata, no conv3 tensors) loads as the
    two-stage network it is and computes the same logits."""
    from mnist_cnn.checkpoint import _write, load_model
    from mnist_cnn.model import FAST_CNN, FastCNN

    assert count_parameters(FastCNN(FAST_CNN)) == 426_362
    torch.manual_seed(0)
    old = FastCNN(dataclasses.replace(FAST_CNN, conv3_channels=0)).eval()
    assert not hasattr(old, "conv3") and count_parameters(old) == 207_098
    meta = old.config.to_dict()
    del meta["conv3_channels"]  # as files were written before the setting
    _write(tmp_path / "old.safetensors", old.state_dict(), {"model": meta})
    loaded, _ = load_model(tmp_path / "old.safetensors")
    x = torch.rand(3, 1, 28, 28)
    assert loaded.config.conv3_channels == 0 and not hasattr(loaded, "conv3")
    assert torch.equal(loaded(x), old(x))  # float32, exact: the same weights and layers


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "deep-mnist", "conv3_channels": 8}, "conv3_channels is a fast-cnn setting"),
        ({"arch": "fast-cnn", "conv3_channels": -1}, "must lie in 0..1024"),
        ({"arch": "fast-cnn", "conv3_channels": 5000}, "must lie in 0..1024"),
        ({"arch": "fast-cnn", "conv3_channels": 2.0}, "must be a whole number"),
    ],
)
def test_a_bad_third_stage_is_refused(changes: dict, message: str) -> None:
    from mnist_cnn.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(changes)
