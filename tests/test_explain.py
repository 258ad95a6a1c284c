"""Attributions: completeness of integrated gradients, a deletion test for every method, the
picture against the arrays, and the command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_cnn import cli
from mnist_cnn import explain as ex
from mnist_cnn.checkpoint import load_model
from mnist_cnn.errors import ConfigError, MnistCnnError


@pytest.fixture(scope="module")
def model(trained_run: Path):
    return load_model(trained_run)[0]


def _logits(model, x: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.as_tensor(x, dtype=torch.float32)).float()


def test_integrated_gradients_add_up_to_the_logit_difference(model, mnist) -> None:
    """Completeness: Σ attributions = logit(x) − logit(blank), within 1% at the default steps."""
    images = mnist.test.images[:12].numpy()
    e = ex.explain(model, images, "integrated-gradients")
    x = e.inputs
    t = torch.as_tensor(e.targets)[:, None]
    gap = (_logits(model, x).gather(1, t) - _logits(model, np.zeros_like(x)).gather(1, t))[:, 0]
    total = torch.as_tensor(e.attributions.sum(axis=(1, 2)), dtype=torch.float32)
    rel = ((total - gap).abs() / gap.abs()).max().item()
    assert rel <= 0.01, f"completeness off by {100 * rel:.2f}% at {ex.IG_STEPS} steps"
    assert gap.abs().min() > 1.0  # a real gap, so 1% is a real bound
    coarse = ex.integrated_gradients(model, images[:4], steps=1)  # one step is only an estimate
    assert not np.allclose(coarse.sum(axis=(1, 2)), gap[:4].numpy(), rtol=0.01)


def test_gradient_x_input_and_occlusion_by_hand(model, mnist) -> None:
    image = mnist.test.images[0].numpy()
    x = torch.as_tensor(image, dtype=torch.float32)[None] / 255
    x.requires_grad_(True)
    model.eval()
    logits = model(x)
    k = int(logits.argmax())
    (grad,) = torch.autograd.grad(logits[0, k], x)
    np.testing.assert_allclose(
        ex.gradient_x_input(model, image), (grad * x).detach().numpy(), rtol=1e-4, atol=1e-6
    )
    # Occlusion with one 28×28 patch: every pixel gets logit(x) − logit(blank).
    whole = ex.occlusion(model, image, patch=28, stride=28)
    drop = (_logits(model, x.detach().numpy()) - _logits(model, np.zeros((1, 28, 28))))[0, k]
    np.testing.assert_allclose(whole, np.full((1, 28, 28), drop.item()), rtol=1e-4, atol=1e-5)
    # A patch over empty background changes nothing: zero there.
    occ = ex.occlusion(model, image)
    assert np.abs(occ[0, :2, :2]).max() < 1e-4  # (batched float sums differ by ~1e-6)


def test_targets_and_errors(model, mnist) -> None:
    images = mnist.test.images[:2].numpy()
    e = ex.explain(model, images, "gradient-x-input", target=3)
    assert e.targets.tolist() == [3, 3]
    with pytest.raises(ConfigError, match="target class"):
        ex.explain(model, images, target=10)
    with pytest.raises(ConfigError, match="unknown method"):
        ex.explain(model, images, "saliency")
    with pytest.raises(MnistCnnError, match="28×28"):
        ex.explain(model, np.zeros((2, 27, 27), np.uint8))


@pytest.mark.slow
def test_deletion_most_attributed_pixels_matter_most(model, mnist) -> None:
    """Blanking the k most-attributed pixels lowers the predicted class's probability more than
    blanking k random ink pixels, for every method, on 500 test digits (IG at 4 steps and
    occlusion with 7×7 patches here, to keep the test cheap)."""
    n, ks = 500, (10, 30)
    images = mnist.test.images[:n].numpy()
    x = torch.as_tensor(images, dtype=torch.float32) / 255
    predicted = _logits(model, x.numpy()).argmax(1)[:, None]

    def kept(batch: torch.Tensor, t: torch.Tensor) -> float:
        """The mean probability left to each digit's class ``t`` once pixels are blanked."""
        p = torch.softmax(_logits(model, batch.view(n, 28, 28).numpy()), 1)
        return p.gather(1, t).mean().item()

    # The control: k random ink pixels of each digit blanked (the same for every method).
    rng = np.random.default_rng(0)
    random_curve = []
    for k in ks:
        rand = x.clone().view(n, -1)
        for i in range(n):
            ink = np.flatnonzero(images[i].ravel() > 0)
            rand[i, rng.choice(ink, size=min(k, len(ink)), replace=False)] = 0.0
        random_curve.append(kept(rand, predicted))
    options = {"integrated-gradients": {"steps": 4}, "occlusion": {"patch": 7, "stride": 7}}
    areas = {"random": float(np.mean(random_curve))}
    for method in ex.METHODS:
        e = ex.explain(model, images, method, **options.get(method, {}))
        t = torch.as_tensor(e.targets)[:, None]
        assert torch.equal(t, predicted)  # every method explains the predicted class
        order = np.argsort(-e.attributions.reshape(n, -1), axis=1, kind="stable")
        curve = []
        for k in ks:
            top = x.clone().view(n, -1)
            top.scatter_(1, torch.as_tensor(order[:, :k]), 0.0)
            curve.append(kept(top, t))
        areas[method] = float(np.mean(curve))
        for j, k in enumerate(ks):
            assert curve[j] < random_curve[j], (method, k, curve, random_curve)
    print("mean probability over k = 10, 30 blanked pixels:", areas)


def test_picture_holds_the_arrays(model, mnist, tmp_path: Path) -> None:
    images = mnist.test.images[:2].numpy()
    fig, exps = ex.explain_figure(
        model, images, ["test #0", "test #1"], labels=[int(v) for v in mnist.test.labels[:2]]
    )
    for e in exps:
        for i in range(2):
            (panel,) = [a for a in fig.axes if a.get_label() == f"{e.method}[{i}]"]
            np.testing.assert_array_equal(
                np.asarray(panel.images[0].get_array()), e.attributions[i]
            )
            lo, hi = panel.images[0].get_clim()
            assert lo == -hi == -(np.abs(e.attributions[i]).max() or 1.0)  # white is 0
            (over,) = [a for a in fig.axes if a.get_label() == f"{e.method} overlay[{i}]"]
            rgb = np.asarray(over.images[0].get_array())
            strongest = np.unravel_index(np.argmax(e.attributions[i]), (28, 28))
            assert rgb[strongest][0] > 0.9 and rgb[strongest][2] < 0.2  # red where it counts


@pytest.mark.slow
def test_cli_explain_writes_a_picture(trained_run: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    out = tmp_path / "why.png"
    code = cli.main(
        ["explain", str(trained_run), "--index", "0", "3", "--target", "7", "-o", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "test #0" in text and "test #3" in text and str(out) in text
    assert Image.open(out).size[0] > 600
    code = cli.main(["explain", str(trained_run), "-o", str(out)])
    assert code == 1 and "--index" in capsys.readouterr().err


def test_integrated_gradients_agree_with_captum(model, mnist) -> None:
    """The reference implementation (captum, in the dev extra: an ImportError here means the dev
    extra is not installed, never a skip), same baseline and midpoint rule: equal to float
    rounding."""
    from captum.attr import IntegratedGradients

    images = mnist.test.images[20:24].numpy()
    ours = ex.explain(model, images, "integrated-gradients", steps=32)
    x = torch.as_tensor(ours.inputs)
    model.eval()
    theirs = IntegratedGradients(model).attribute(
        x,
        baselines=torch.zeros_like(x),
        target=torch.as_tensor(ours.targets),
        n_steps=32,
        method="riemann_middle",
        internal_batch_size=64,
    )
    np.testing.assert_allclose(ours.attributions, theirs.detach().numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_mistakes_get_the_evidence_for_both_answers(model, mnist) -> None:
    from mnist_cnn import inspect as insp

    images = mnist.test.images[:300].numpy()
    probs = insp.predict_probabilities(model, images)
    worst = insp.confident_mistakes(probs, mnist.test.labels[:300].numpy(), k=3)
    assert worst  # the 600-step run gets a few of 300 wrong
    fig = ex.mistake_explanations(model, images, worst)
    x = images[[m.index for m in worst]]
    said = ex.integrated_gradients(model, x, [m.predicted for m in worst])
    truth = ex.integrated_gradients(model, x, [m.label for m in worst])
    panels = [a for a in fig.axes if a.get_label().startswith("integrated-gradients[")]
    assert len(panels) == 2 * len(worst)
    for i in range(len(worst)):
        drawn = [
            np.asarray(a.images[0].get_array()) for a in panels if a.get_label().endswith(f"[{i}]")
        ]
        np.testing.assert_allclose(drawn[0], said[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(drawn[1], truth[i], rtol=1e-5, atol=1e-6)
