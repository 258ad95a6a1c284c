"""Property-based attacks on pictures: random bytes, damaged PNGs, odd arrays.

``load_image`` and ``preprocess_image`` either give a 28×28 uint8 digit or an ImageError with a
short one-line message; ``predict_files`` turns every bad file into a Failure and never raises.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from mnist_cnn.checkpoint import load_model
from mnist_cnn.predict import Failure, Prediction, predict_files
from mnist_cnn.preprocess import ImageError, load_image, preprocess_image

from .hostile_util import tiny_model_file

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # No shrinking: a failure is reported as found; a failing run stays as short as a passing one.
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)


def _png(mode: str, size: tuple[int, int]) -> bytes:
    img = Image.new(mode, size, "white" if mode != "P" else 0)
    img.paste(Image.new(mode, (size[0] // 3 or 1, size[1] // 2 or 1)), (size[0] // 3, size[1] // 4))
    buf = io.BytesIO()
    img.save(buf, format="PNG" if mode != "CMYK" else "JPEG")
    return buf.getvalue()


PICTURES = [
    _png(m, s)
    for m, s in [
        ("L", (40, 60)),
        ("RGBA", (64, 48)),
        ("P", (30, 30)),
        ("1", (50, 50)),
        ("CMYK", (45, 45)),
        ("I;16", (33, 40)),
    ]
]


def _outcome(source) -> np.ndarray | None:
    try:
        return preprocess_image(load_image(source))
    except ImageError as err:
        message = str(err)
        assert message and "\n" not in message and len(message) < 300, message
        return None


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.binary(max_size=2_000))
def test_random_bytes_are_a_picture_or_a_clean_error(data):
    _outcome(data)


@pytest.mark.timeout(60)
@FUZZ
@given(
    picture=st.sampled_from(PICTURES),
    cut=st.integers(min_value=0, max_value=4_000),
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=4_000), st.integers(0, 7)), max_size=6
    ),
)
def test_damaged_pictures_are_a_digit_or_a_clean_error(picture, cut, flips):
    data = bytearray(picture)
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    if cut < len(data):
        data = data[:cut]
    out = _outcome(bytes(data))
    if out is not None:
        assert out.shape == (28, 28) and out.dtype == np.uint8


@pytest.mark.timeout(60)
@FUZZ
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.float32, np.float64, np.int64]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
    )
)
def test_arrays_are_a_digit_or_a_clean_error(arr):
    """Also silently: a RuntimeWarning (an overflowing cast, found with 1,500 examples: 1e300
    became inf in float32 before the range check) would reach a server's log or the terminal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            out = preprocess_image(arr)
    except ImageError as err:
        assert "\n" not in str(err) and len(str(err)) < 300
    else:
        assert out.shape == (28, 28) and out.dtype == np.uint8


def test_a_huge_float_array_is_refused_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ImageError, match="must lie in 0–255"):
            preprocess_image(np.full((28, 28), 1e300))


def test_predict_files_reports_every_bad_file_and_classifies_the_rest(tmp_path):
    model, _ = load_model(tiny_model_file(tmp_path / "m.safetensors"))
    good = tmp_path / "good.png"
    good.write_bytes(PICTURES[0])
    bad = {"empty.png": b"", "text.png": b"hello", "cut.png": PICTURES[1][:100]}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    names = [good, *(tmp_path / n for n in bad), folder, tmp_path / "missing.png"]
    results = predict_files(model, names)
    assert isinstance(results[0], Prediction)
    assert all(isinstance(r, Failure) for r in results[1:])
    assert all(str(r.source) in r.message for r in results[1:])
