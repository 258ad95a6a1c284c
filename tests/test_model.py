import pytest
import torch

from mnist_cnn.model import ACTIVATIONS, DeepMNIST, count_parameters, loss_fn


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


def test_loss_is_stable_where_the_seeds_formula_is_not():
    logits = torch.tensor([[200.0, -200.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 2])
    naive = -(torch.nn.functional.one_hot(labels, 3) * torch.log(torch.softmax(logits, 1))).sum()
    assert not torch.isfinite(naive)  # softmax underflows to 0 and log(0) = -inf
    loss = loss_fn(logits, labels)
    assert torch.isfinite(loss)
    expected = (400.0 + torch.log(torch.tensor(3.0))) / 2  # mean of the two examples
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
