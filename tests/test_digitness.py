"""The "not a digit" score: its rates on real digits, photo-like digits and pictures that are no
digits, its file in the run folder, and where people meet it (predict, evaluate --ood)."""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_cnn import cli
from mnist_cnn import digitness as dg
from mnist_cnn.checkpoint import load_model
from mnist_cnn.photos import photo_like
from mnist_cnn.preprocess import ImageError, preprocess_image
from tests.idx_util import idx_bytes
from tests.nondigits import non_digit_pictures


@pytest.fixture(scope="module")
def model(trained_run: Path):
    return load_model(trained_run)[0]


@pytest.fixture(scope="module")
def scorer(trained_run: Path, model, mnist) -> dg.DigitScorer:
    return dg.scorer_for_run(trained_run, model)


def test_auroc_against_counting_pairs() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 60).round(1), rng.normal(0, 1, 40).round(1)  # rounded: ties
    pairs = (a[:, None] > b[None]).mean() + 0.5 * (a[:, None] == b[None]).mean()
    assert dg.auroc(a, b) == pytest.approx(pairs, abs=1e-12)
    assert dg.auroc(np.ones(3), np.zeros(3)) == 1.0


@pytest.mark.slow
def test_rates_on_digits_and_non_digits(scorer, model, mnist) -> None:
    """≤ 2% of unseen test digits and ≤ 5% of photo-like digits flagged; of 200 generated
    pictures that are no digits, at least 60% are flagged or refused as blank. The aim is 90%
    and is NOT reached: this run (600 steps) flags 69% of them; docs/inspect.md gives the rates.
    The 60% floor catches a broken score (chance would flag about 1.5%)."""
    test = scorer.flags(scorer.scores(model, mnist.test.images[:2000])).mean()
    assert test <= 0.02, test
    rng = np.random.default_rng(0)
    photos = [preprocess_image(photo_like(d.numpy(), rng)) for d in mnist.test.images[2000:2200]]
    photo = scorer.flags(scorer.scores(model, np.stack(photos))).mean()
    assert photo <= 0.05, photo
    seen, refused = [], 0
    for _, picture in non_digit_pictures(200, seed=0):
        try:
            seen.append(preprocess_image(picture))
        except ImageError:
            refused += 1
    caught = (scorer.flags(scorer.scores(model, np.stack(seen))).sum() + refused) / 200
    print(f"flagged: test digits {test:.3f}, photo-like {photo:.3f}, non-digits {caught:.3f}")
    assert caught >= 0.60, caught


def test_stored_with_the_run_and_recomputed_when_stale(
    trained_run: Path, scorer, model, tmp_path: Path
) -> None:
    stored = trained_run / dg.DIGITNESS_FILE
    assert stored.is_file()
    again = dg.scorer_for_run(trained_run, model, data_dir=tmp_path / "no-data")  # no data: read
    assert again.threshold == scorer.threshold
    assert np.array_equal(again.references.numpy(), scorer.references.numpy())
    assert again.references.shape == (dg.REFERENCES, 1024)
    # A damaged file, or one for another model, is not used: it must be recalibrated (and
    # without data that fails with the usual one-line message).
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / dg.DIGITNESS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(Exception, match="mnist"):
        dg.scorer_for_run(run, model, data_dir=tmp_path / "no-data")
    shutil.copy(stored, run / dg.DIGITNESS_FILE)
    model_path = run / "model.safetensors"
    model_path.write_bytes(model_path.read_bytes() + b" ")  # another model file
    assert dg._read(run / dg.DIGITNESS_FILE, dg._model_digest(run)) is None
    assert dg.optional_scorer(run, model, data_dir=tmp_path / "no-data") is None


@pytest.mark.slow
def test_predict_says_not_sure(trained_run: Path, scorer, tmp_path: Path, capsys) -> None:
    model = load_model(trained_run)[0]
    names = []
    for i, (_kind, picture) in enumerate(non_digit_pictures(40, seed=3)):
        try:
            score = scorer.scores(model, preprocess_image(picture)[None])[0]
        except ImageError:
            continue
        if score < scorer.threshold:
            Image.fromarray(picture).save(tmp_path / f"odd{i}.png")
            names.append(f"odd{i}.png")
        if len(names) == 2:
            break
    assert names
    code = cli.main(["predict", str(trained_run), *(str(tmp_path / n) for n in names)])
    out = capsys.readouterr().out
    assert code == 0 and out.count("(not sure this is a digit)") == len(names), out
    cli.main(["predict", str(trained_run), str(tmp_path / names[0]), "--json"])
    (row,) = json.loads(capsys.readouterr().out)
    assert row["not_a_digit"] is True and row["digit_score"] < scorer.threshold


@pytest.mark.slow
def test_evaluate_ood_prints_auroc(trained_run: Path, scorer, tmp_path: Path, capsys) -> None:
    """--ood on a dataset of non-digit pictures written as IDX files (as Fashion-MNIST's)."""
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    seen = []
    for _, picture in non_digit_pictures(120, seed=5):
        with contextlib.suppress(ImageError):
            seen.append(preprocess_image(picture))
    test = np.stack(seen)
    train = np.zeros((5001, 28, 28), np.uint8)
    for name, arr in {
        "train-images-idx3-ubyte": train,
        "train-labels-idx1-ubyte": np.zeros(len(train), np.uint8),
        "t10k-images-idx3-ubyte": test,
        "t10k-labels-idx1-ubyte": np.zeros(len(test), np.uint8),
    }.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arr), compresslevel=1))
    code = cli.main(
        ["evaluate", str(trained_run), "--ood", "fashion-mnist", "--ood-data-dir",
         str(tmp_path / "data"), "--json"]
    )  # fmt: skip
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == len(test) and r["dataset"] == "fashion-mnist"
    assert r["auroc"] > 0.9 and r["flagged"] > 0.5 and r["digits_flagged"] <= 0.02
