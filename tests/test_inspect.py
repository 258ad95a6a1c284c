"""Pictures of the network's insides: layouts, and that what is drawn is what the model computed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_cnn import cli
from mnist_cnn import inspect as insp
from mnist_cnn.checkpoint import load_model
from mnist_cnn.datasets import to_float
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.plotting import save_figure


def _panels(fig, prefix: str) -> list:
    """The figure's map images labelled ``<prefix>[c]``, in drawing order."""
    return [im for ax in fig.axes for im in ax.images if im.get_label().startswith(prefix + "[")]


def _titles(fig) -> dict[str, str]:
    """Text label -> text, over the whole figure."""
    return {t.get_label(): t.get_text() for ax in fig.axes for t in ax.texts}


@pytest.fixture(scope="module")
def model(tiny_run: Path):
    """The seed network after a short run: what is drawn must be what it computes."""
    m, _ = load_model(tiny_run)
    return m


@pytest.fixture(scope="module")
def two_digits(mnist) -> list[insp.Digit]:
    idx = insp.first_of_each(mnist.test, [6, 9])
    return insp.split_digits(mnist.test, idx)


def test_grid_shapes() -> None:
    assert insp.grid_shape(32) == (4, 8)  # the seed's grid
    assert insp.grid_shape(64) == (8, 8)
    rows, cols = insp.grid_shape(20)
    assert rows * cols >= 20


def test_first_of_each_finds_labels(mnist) -> None:
    i6, i9 = insp.first_of_each(mnist.test, [6, 9])
    assert int(mnist.test.labels[i6]) == 6 and int(mnist.test.labels[i9]) == 9
    assert not (mnist.test.labels[:i6] == 6).any()


@pytest.mark.parametrize("layer, channels", [("conv1", 32), ("conv2", 64), ("pool2", 64)])
def test_pictured_maps_are_the_models_activations(model, two_digits, layer, channels) -> None:
    fm = insp.feature_maps(model, two_digits, layer)
    fig = insp.plot_feature_maps(fm)
    panels = _panels(fig, layer)
    titles = _titles(fig)
    assert len(panels) == 2 * channels  # one full grid per digit
    # The reference: the model's own forward pass, run separately here.
    x = to_float(torch.from_numpy(np.stack([d.image for d in two_digits])))
    with torch.inference_mode():
        logits, acts = model(x, return_activations=True)
    expected = acts[layer].numpy()
    for j, im in enumerate(panels):
        n, c = divmod(j, channels)
        assert im.get_label() == f"{layer}[{c}]"
        drawn = np.asarray(im.get_array())
        np.testing.assert_array_equal(drawn, expected[n, c])
        assert titles[f"{layer}[{c}] title"] == str(c)
        lo, hi = im.get_clim()
        assert lo == 0.0 and hi == (expected[n, c].max() or 1.0)  # per-map scale by default
    inputs = [ax for ax in fig.axes if ax.get_label() == "input"]
    assert len(inputs) == 2
    np.testing.assert_array_equal(inputs[0].images[0].get_array(), x[0].numpy())
    np.testing.assert_allclose(fm.probabilities, torch.softmax(logits, 1).numpy(), rtol=1e-6)
    # Titles name the true label, the prediction and its probability.
    texts = [t.get_text() for t in fig.texts]
    assert any("true 6, predicted" in t for t in texts)
    assert any("true 9, predicted" in t and "(p = " in t for t in texts)


def test_shared_scale_is_one_scale(model, two_digits) -> None:
    fm = insp.feature_maps(model, two_digits, "conv1")
    fig = insp.plot_feature_maps(fm, scale="shared")
    clims = {im.get_clim() for im in _panels(fig, "conv1")}
    assert clims == {(0.0, float(fm.maps.max()))}
    with pytest.raises(MnistCnnError):
        insp.plot_feature_maps(fm, scale="log")


def test_feature_maps_reject_unknown_layer_and_no_digits(model, two_digits) -> None:
    with pytest.raises(MnistCnnError, match="unknown layer"):
        insp.feature_maps(model, two_digits, "fc1")
    with pytest.raises(MnistCnnError, match="no digits"):
        insp.feature_maps(model, [], "conv1")


def test_filters_pictures_hold_the_weights(model) -> None:
    w1 = insp.filters(model, "conv1")
    assert w1.shape == (32, 1, 5, 5)
    fig = insp.plot_filters(w1, "conv1")
    panels = _panels(fig, "conv1")
    assert len(panels) == 32
    for c, im in enumerate(panels):
        assert im.get_label() == f"conv1[{c}]"
        np.testing.assert_array_equal(im.get_array(), w1[c, 0])
        lo, hi = im.get_clim()
        assert lo == -hi  # symmetric: gray is zero
    w2 = insp.filters(model, "conv2")
    assert w2.shape == (64, 32, 5, 5)
    mosaic = insp.filter_mosaic(w2)
    assert mosaic.shape == (64 * 6 - 1, 32 * 6 - 1)
    np.testing.assert_array_equal(mosaic[6 * 7 : 6 * 7 + 5, 6 * 3 : 6 * 3 + 5], w2[7, 3])
    assert np.isnan(mosaic[5]).all()  # the gap after the first row of tiles
    fig2 = insp.plot_filters(w2, "conv2")
    np.testing.assert_array_equal(
        np.ma.filled(_panels(fig2, "conv2")[0].get_array(), np.nan), mosaic
    )


def _suptitle(fig) -> str:
    return fig.get_suptitle() if hasattr(fig, "get_suptitle") else fig._suptitle.get_text()


def _fake_run(folder: Path, steps: int, done: bool) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"train": {"steps": 1000}}))
    lines = [
        json.dumps(
            {
                "step": s,
                "loss": None if s == 0 else 2.0 / (1 + s / 100),
                "train_accuracy": min(1.0, 0.1 + s / 500),
                "val_accuracy": min(0.99, 0.1 + s / 520),
                "seconds": s / 10,
            }
        )
        for s in range(0, steps + 1, 100)
    ]
    # A live run may be caught mid-line: the torn record is skipped.
    (folder / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 9')
    if done:
        (folder / "results.json").write_text(
            json.dumps({"step": steps, "test": {"accuracy": 0.987}})
        )
    return folder


def test_training_curves_from_metrics(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "live", 400, done=False)
    fig = insp.training_curves(run)
    loss_ax, acc_ax, err_ax = fig.axes
    steps, loss = loss_ax.lines[0].get_data()
    np.testing.assert_array_equal(steps, [0, 100, 200, 300, 400])
    assert np.isnan(loss[0]) and loss[1] == pytest.approx(1.0)
    assert [ln.get_label() for ln in acc_ax.lines] == ["training (1 batch)", "validation"]
    assert "step 400 of 1000" in _suptitle(fig)
    out = insp.save_training_curves(run)
    assert out == run / insp.CURVES_FILE
    assert Image.open(out).format == "PNG"
    done = _fake_run(tmp_path / "done", 1000, done=True)
    assert "test accuracy 0.9870" in _suptitle(insp.training_curves(done))


def test_training_curves_need_records(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(MnistCnnError, match="no records"):
        insp.training_curves(tmp_path)
    with pytest.raises(MnistCnnError, match="metrics.jsonl"):
        insp.training_curves(tmp_path / "nowhere")


def test_training_writes_its_curves(tiny_run: Path) -> None:
    assert Image.open(tiny_run / insp.CURVES_FILE).format == "PNG"


def test_confusion_and_confident_mistakes() -> None:
    labels = np.array([0, 1, 2, 2, 1])
    probs = np.array(
        [
            [0.9, 0.1, 0.0],
            [0.2, 0.7, 0.1],
            [0.0, 0.6, 0.4],  # wrong, 0.6
            [0.95, 0.0, 0.05],  # wrong, 0.95
            [0.1, 0.9, 0.0],
        ]
    )
    conf = insp.confusion_matrix(labels, probs.argmax(1), 3)
    assert conf.tolist() == [[1, 0, 0], [0, 2, 0], [1, 1, 0]]
    mistakes = insp.confident_mistakes(probs, labels, k=5)
    assert [(m.index, m.label, m.predicted) for m in mistakes] == [(3, 2, 0), (2, 2, 1)]
    assert mistakes[0].probability == pytest.approx(0.95)
    fig = insp.plot_mistakes(mistakes, np.zeros((5, 28, 28), np.uint8))
    assert sum(1 for ax in fig.axes if ax.images) == 2
    fig = insp.plot_confusion(conf, ["a", "b", "c"])
    assert {t.get_text() for t in fig.axes[0].texts} == {"1", "2"}


@pytest.mark.slow  # four whole figures: seconds of drawing (the fast tier skips it)
def test_cli_features_filters_plot(tiny_run: Path, tiny_root: Path, tmp_path: Path, capsys) -> None:
    own = tmp_path / "my digit.png"
    Image.fromarray(np.full((40, 30), 255, np.uint8)).save(own)  # blank: refused below
    out = tmp_path / "new" / "folder" / "maps.png"
    args = ["--data-dir", str(tiny_root), "--index", "0", "3", "-o", str(out)]
    assert cli.main(["features", str(tiny_run), *args]) == 0
    assert Image.open(out).format == "PNG"
    capsys.readouterr()
    assert cli.main(["features", str(tiny_run), "--image", str(own), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{own}: no digit found" in err
    digit = np.zeros((60, 60), np.uint8)
    digit[10:50, 28:34] = 255  # a 1
    Image.fromarray(255 - digit).save(own)
    out2 = tmp_path / "conv2.png"
    cmd = ["features", str(tiny_run), "--image", str(own), "--layer", "conv2", "-o", str(out2)]
    assert cli.main(cmd) == 0
    assert Image.open(out2).size[0] > 300
    out3 = tmp_path / "f.png"
    assert cli.main(["filters", str(tiny_run), "--layer", "conv2", "-o", str(out3)]) == 0
    assert Image.open(out3).format == "PNG"
    out4 = tmp_path / "curves.png"
    assert cli.main(["plot", str(tiny_run), "-o", str(out4)]) == 0
    assert Image.open(out4).format == "PNG"


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert cli.main(["plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl" in err
    assert cli.main(["features", str(tmp_path / "none"), "--index", "0"]) == 1
    assert "no such run" in capsys.readouterr().err


def test_save_figure_creates_folders(tmp_path: Path) -> None:
    fig = insp.plot_confusion(np.eye(3, dtype=int) * 5)
    path = save_figure(fig, tmp_path / "a" / "b" / "c.png")
    assert Image.open(path).format == "PNG"
    assert [p.name for p in path.parent.iterdir()] == ["c.png"]  # no temp file left behind


def test_pictures_of_a_fast_preset_run(tiny_fast_run: Path, tiny_data, tmp_path: Path) -> None:
    """The fast preset's network (16 channels of 3×3, batch norm): the same pictures, laid out
    for its own channel counts, drawing its own activations."""
    model, meta = load_model(tiny_fast_run)
    c1 = meta["model"]["conv1_channels"]
    digits = insp.split_digits(tiny_data.test, [0, 1])
    fm = insp.feature_maps(model, digits, "conv1")
    panels = _panels(insp.plot_feature_maps(fm), "conv1")
    assert len(panels) == 2 * c1
    x = to_float(torch.from_numpy(np.stack([d.image for d in digits])))
    with torch.inference_mode():
        _, acts = model(x, return_activations=True)
    for j, im in enumerate(panels):
        n, c = divmod(j, c1)
        np.testing.assert_array_equal(np.asarray(im.get_array()), acts["conv1"][n, c])
    w = insp.filters(model, "conv1")
    k = meta["model"]["kernel_size"]
    assert w.shape == (c1, 1, k, k)
    out = tmp_path / "f.png"
    assert cli.main(["filters", str(tiny_fast_run), "--layer", "conv2", "-o", str(out)]) == 0
    assert Image.open(out).format == "PNG"
