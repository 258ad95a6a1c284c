"""The fast preset's feature maps: pictured as what its layers read (after batch norm and ReLU),
in the features picture, the page's API and TensorBoard, checked pixel by pixel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnist_cnn import inspect as insp
from mnist_cnn import tblog
from mnist_cnn.checkpoint import save_model
from mnist_cnn.errors import ConfigError
from mnist_cnn.model import FastCNN
from mnist_cnn.serve import DigitSet, create_app, decode_maps


@pytest.fixture(scope="module")
def fast_model() -> FastCNN:
    """An untrained fast network with batch-norm statistics and scales as training leaves them:
    shifted, spread, and a few negative scales (where pooling and batch norm do not commute)."""
    torch.manual_seed(0)
    model = FastCNN()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn_conv3, model.bn3):
            n = bn.num_features
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.05, 0.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.weight[:2] *= -1
            bn.bias.uniform_(-0.2, 0.2)
            assert n > 2
    return model.eval()


@pytest.fixture(scope="module")
def two_digits(mnist) -> list[insp.Digit]:
    return insp.split_digits(mnist.test, insp.first_of_each(mnist.test, [6, 9]))


def _x(digits: list[insp.Digit]) -> torch.Tensor:
    return torch.from_numpy(np.stack([d.image for d in digits])).float().div(255).unsqueeze(1)


def test_fast_maps_are_the_batch_normalised_relu_of_the_convolution(fast_model, two_digits):
    x = _x(two_digits)
    with torch.inference_mode():
        logits, acts = fast_model(x, return_activations=True)
        plain = fast_model(x)
        raw1 = fast_model.conv1(x)
        raw2 = fast_model.conv2(acts["pool1"])
        by_hand1, by_hand2 = F.relu(fast_model.bn1(raw1)), F.relu(fast_model.bn2(raw2))
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)  # asking for maps changes nothing
    torch.testing.assert_close(acts["conv1"], by_hand1)
    torch.testing.assert_close(acts["conv2"], by_hand2)
    assert acts["conv1"].min() >= 0 and acts["conv2"].min() >= 0
    assert (raw1 < 0).float().mean() > 0.1  # the raw maps were signed: the test can tell
    # Pooling the pictured maps gives the pooled maps the network used, where BN's scale > 0.
    for name, pooled, bn in (
        ("conv1", "pool1", fast_model.bn1),
        ("conv2", "pool2", fast_model.bn2),
    ):
        pos = bn.weight > 0
        assert 0 < pos.sum() < len(pos)
        torch.testing.assert_close(
            F.max_pool2d(acts[name], 2)[:, pos], acts[pooled][:, pos], rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("layer, channels", [("conv1", 16), ("conv2", 32)])
def test_features_picture_draws_the_fast_maps(fast_model, two_digits, layer, channels):
    fm = insp.feature_maps(fast_model, two_digits, layer)
    fig = insp.plot_feature_maps(fm)
    with torch.inference_mode():
        _, acts = fast_model(_x(two_digits), return_activations=True)
    panels = [im for ax in fig.axes for im in ax.images if im.get_label().startswith(layer + "[")]
    assert len(panels) == 2 * channels
    lit = 0
    for j, im in enumerate(panels):
        n, c = divmod(j, channels)
        expected = acts[layer][n, c].numpy()
        np.testing.assert_array_equal(np.asarray(im.get_array()), expected)
        lo, hi = im.get_clim()
        assert lo == 0.0 and hi == (expected.max() or 1.0)  # black = 0: nothing below is lost
        lit += expected.max() > 0
    assert lit >= channels  # most maps show something


def test_tensorboard_grid_holds_the_fast_maps(fast_model, two_digits):
    with torch.inference_mode():
        _, acts = fast_model(_x(two_digits[:1]), return_activations=True)
    maps = acts["conv1"][0]
    grid = tblog.feature_map_grid(maps)
    rows, cols = tblog.GRID_ROWS, 4
    h = w = 28
    top = float(maps.max())
    for c in range(16):
        r, k = divmod(c, cols)
        tile = grid[0, r * (h + 1) : r * (h + 1) + h, k * (w + 1) : k * (w + 1) + w]
        torch.testing.assert_close(tile, maps[c] / top)
    assert rows == 4


def test_served_maps_are_the_fast_maps(fast_model, two_digits, tmp_path: Path):
    from fastapi.testclient import TestClient

    save_model(tmp_path / "model.safetensors", fast_model, {"step": 0})
    images = np.stack([d.image for d in two_digits])
    app = create_app(tmp_path, test_digits=DigitSet(images, np.array([6, 9])), digit_check=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        body = client.get("/api/random-test-digit", params={"index": 0, "activations": True}).json()
    with torch.inference_mode():
        _, acts = fast_model(_x(two_digits[:1]), return_activations=True)
    for name in ("conv1", "conv2"):
        expected = acts[name][0].numpy()
        got = decode_maps(body["activations"][name])
        span = (expected.max(axis=(1, 2)) - expected.min(axis=(1, 2)))[:, None, None]
        assert np.all(np.abs(got - expected) <= span / 510 + 1e-6)  # the wire's uint8 step
        assert min(body["activations"][name]["min"]) >= 0  # the page's black is 0


def test_the_third_stage_is_pictured_as_computed_and_refused_where_absent(
    fast_model, two_digits
) -> None:
    """conv3's maps and kernels are the layer's own; a two-stage network has none to show."""
    x = _x(two_digits)
    with torch.inference_mode():
        by_hand = F.relu(fast_model.bn_conv3(fast_model.conv3(fast_model(x, True)[1]["pool2"])))
    maps = insp.feature_maps(fast_model, two_digits, "conv3")
    assert maps.maps.shape == (2, 64, 7, 7) and maps.maps.min() >= 0
    np.testing.assert_allclose(maps.maps, by_hand.numpy(), rtol=1e-6, atol=1e-6)  # float32
    kernels = fast_model.conv3.weight.detach().numpy()
    assert np.array_equal(insp.filters(fast_model, "conv3"), kernels)
    two_stage = FastCNN(dataclasses.replace(fast_model.config, conv3_channels=0)).eval()
    for call in (
        lambda: insp.feature_maps(two_stage, two_digits, "conv3"),
        lambda: insp.filters(two_stage, "conv3"),
    ):
        with pytest.raises(ConfigError, match="has no conv3 layer: choose conv1 or conv2"):
            call()
