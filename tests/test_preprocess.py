"""MNIST-style preprocessing of people's pictures, on small generated images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_cnn.photos import photo_like
from mnist_cnn.preprocess import ImageError, load_image, preprocess_image


def _bar(h: int, w: int, top: int, left: int, bh: int, bw: int, ink: int = 0, paper: int = 255):
    img = np.full((h, w), paper, np.uint8)
    img[top : top + bh, left : left + bw] = ink
    return img


def _com(img: np.ndarray) -> tuple[float, float]:
    a = img.astype(float)
    ys, xs = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    return (a * ys).sum() / a.sum(), (a * xs).sum() / a.sum()


def test_dark_ink_on_light_paper_becomes_mnist_like() -> None:
    out = preprocess_image(_bar(300, 200, 20, 150, 120, 30))  # a thick upright bar, off centre
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out.max() == 255 and out[0].max() == 0 and out[:, 0].max() == 0  # white on black
    cy, cx = _com(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5  # centred by centre of mass, as MNIST
    rows = np.flatnonzero(out.max(1) > 0)
    cols = np.flatnonzero(out.max(0) > 0)
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert 19 <= height <= 21  # the long side fits the 20×20 box
    assert 4 <= width <= 7  # aspect ratio kept (120:30 -> 20:5)


def test_inversion_is_automatic_or_forced() -> None:
    light = _bar(100, 100, 20, 40, 60, 12)
    dark = 255 - light
    np.testing.assert_array_equal(preprocess_image(light), preprocess_image(dark))
    np.testing.assert_array_equal(preprocess_image(dark, invert=False), preprocess_image(dark))
    np.testing.assert_array_equal(preprocess_image(light, invert=True), preprocess_image(light))
    assert preprocess_image(np.asarray(dark, np.float32) / 255).max() == 255  # floats in 0–1


def test_transparent_background_is_paper() -> None:
    rgba = np.zeros((80, 80, 4), np.uint8)  # fully transparent
    rgba[10:70, 35:45] = (0, 0, 0, 255)  # an opaque black stroke
    out = preprocess_image(Image.fromarray(rgba, "RGBA"))
    assert out.max() == 255 and out[:, :8].max() == 0


def test_noise_does_not_shrink_the_digit() -> None:
    """Speckle far from the digit must not count as ink (it would shrink the digit when fitted)."""
    rng = np.random.default_rng(0)
    img = _bar(400, 400, 150, 180, 120, 24).astype(float)
    img += rng.normal(0, 12, img.shape)
    out = preprocess_image(np.clip(img, 0, 255).astype(np.uint8))
    rows = np.flatnonzero(out.max(1) > 64)
    assert rows[-1] - rows[0] + 1 >= 18


@pytest.mark.parametrize(
    "image, message",
    [
        (np.full((50, 50), 255, np.uint8), "blank"),
        (np.full((50, 50), 3, np.uint8), "blank"),
        (np.zeros((0, 5), np.uint8), "2-D"),
        (np.zeros((5, 5, 3), np.uint8), "2-D"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[-1.0, 0.5]]), "0–255"),
    ],
)
def test_unusable_pictures_raise_image_error(image, message) -> None:
    with pytest.raises(ImageError, match=message):
        preprocess_image(image)


def test_load_image_errors(tmp_path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"hello, world")
    buf = io.BytesIO()
    Image.new("L", (40, 40), 200).save(buf, format="PNG")
    with pytest.raises(ImageError, match="damaged"):
        load_image(buf.getvalue()[:60])  # a truncated PNG
    huge = io.BytesIO()
    Image.new("1", (8000, 6000)).save(huge, format="PNG")  # 48 Mpixel, a few kB on disk
    with pytest.raises(ImageError, match="too"):
        load_image(huge.getvalue())
    assert load_image(buf.getvalue()).size == (40, 40)


def test_photo_like_round_trip_keeps_the_shape_of_the_digit(mnist) -> None:
    digit = mnist.test.images[0].numpy()
    photo = photo_like(digit, np.random.default_rng(3))
    out = preprocess_image(photo).astype(float)
    ref = digit.astype(float)
    corr = np.corrcoef(out.ravel(), ref.ravel())[0, 1]
    assert corr > 0.8, corr


def _stroke(h: int = 120, w: int = 90) -> np.ndarray:
    """A float "7" in [0, 1]: 1 = ink, 0 = paper (a bar across the top and a slanted leg)."""
    ink = np.zeros((h, w), np.float32)
    ink[20:32, 15:75] = 1.0
    for y in range(32, 105):
        x = 70 - (y - 32) * 35 // 73
        ink[y, x - 6 : x + 6] = 1.0
    return ink


def _same_digit(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


def test_exif_orientation_is_applied() -> None:
    """A phone stores a 7 sideways and notes in EXIF how to turn it; the 7 must come out upright."""
    upright = ((1 - _stroke()) * 255).astype(np.uint8)  # dark ink on white
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    buf = io.BytesIO()
    sideways.convert("RGB").save(buf, format="JPEG", quality=95, exif=exif)
    loaded = preprocess_image(load_image(buf.getvalue()))
    expected = preprocess_image(upright)
    assert _same_digit(loaded, expected) > 0.95
    assert _same_digit(preprocess_image(sideways), expected) < 0.6  # the test can tell


@pytest.mark.parametrize("kind", ["16-bit PNG", "float TIFF in 0–1", "float TIFF in 0–255"])
def test_deep_images_keep_their_range(kind: str) -> None:
    ink = _stroke()
    expected = preprocess_image(((1 - ink) * 255).astype(np.uint8))
    paper = 1 - ink  # dark ink on white
    buf = io.BytesIO()
    if kind == "16-bit PNG":
        Image.fromarray((paper * 60000 + 2000).astype(np.uint16)).save(buf, format="PNG")
    elif kind == "float TIFF in 0–1":
        Image.fromarray((paper * 0.9 + 0.05).astype(np.float32)).save(buf, format="TIFF")
    else:
        Image.fromarray((paper * 230 + 10).astype(np.float32)).save(buf, format="TIFF")
    image = load_image(buf.getvalue())
    assert image.mode in ("I;16", "I", "F")  # the test exercises the deep path
    out = preprocess_image(image)
    assert _same_digit(out, expected) > 0.98
    assert out.max() == 255


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (200, 30, 30)])
def test_ink_on_a_transparent_sheet_is_ink(colour) -> None:
    ink = _stroke()
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = (ink * 255).astype(np.uint8)  # opaque strokes, transparent elsewhere
    out = preprocess_image(Image.fromarray(rgba, "RGBA"))
    expected = preprocess_image(((1 - ink) * 255).astype(np.uint8))
    assert _same_digit(out, expected) > 0.98


@pytest.mark.slow
def test_tight_crops_are_read_not_refused(model_for_preprocess, mnist) -> None:
    """Digits cut tightly from a form (ink touching every edge), dark on white, clean, blurred,
    noisy or both: none refused as blank, and ≥ 97% right."""
    from mnist_cnn.photos import tight_crop_like
    from mnist_cnn.predict import classify

    n = 150
    seen, labels = [], []
    for k, (blur, noise) in enumerate([(False, False), (True, False), (False, True), (True, True)]):
        rng = np.random.default_rng(k)
        for i in range(k * n, (k + 1) * n):
            picture = tight_crop_like(mnist.test.images[i].numpy(), rng, blur=blur, noise=noise)
            seen.append(preprocess_image(picture))  # an ImageError here is a refusal: fails
            labels.append(int(mnist.test.labels[i]))
    right = (classify(model_for_preprocess, np.stack(seen)).argmax(1) == np.array(labels)).mean()
    assert right >= 0.97, f"tight crops: {right:.3f} right"


@pytest.fixture(scope="module")
def model_for_preprocess(trained_run):
    from mnist_cnn.checkpoint import load_model

    return load_model(trained_run)[0]


def _big_seven(mode: str, side: int = 1_400) -> Image.Image:
    """A dark 7 on white paper, larger than the work size (so it is shrunk first), in ``mode``."""
    gray = np.full((side, side), 255, np.uint8)
    gray[200:320, 300:1_100] = 0  # the bar
    for r in range(320, 1_200):  # the stem
        c = 1_100 - (r - 320) * 500 // 880
        gray[r, c - 60 : c + 60] = 0
    img = Image.fromarray(gray)
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)
    if mode == "LA":
        return Image.merge("LA", (img, Image.new("L", img.size, 255)))
    return img.convert(mode)


@pytest.mark.parametrize("mode", ["LA", "I;16", "CMYK", "P", "1"])
def test_large_pictures_of_every_mode_shrink_to_the_same_digit(mode: str) -> None:
    """Pictures over the work size are shrunk before any float work, whatever their mode
    (alpha, 16-bit, CMYK, palette, bilevel): each gives the 28×28 of the plain gray picture
    (within a few gray levels on average: resampling differs by mode)."""
    reference = preprocess_image(_big_seven("L"))
    out = preprocess_image(_big_seven(mode))
    assert out.shape == (28, 28)
    assert np.abs(out.astype(float) - reference.astype(float)).mean() < 8, mode


def test_a_folder_and_an_empty_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a folder, not an image"):
        load_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_image(empty)


def test_a_perfectly_flat_frame_is_paper() -> None:
    """Found by the fuzz test: a frame of one gray level (a clean drawing on gray paper) asked
    numpy for 32 histogram bins inside a range float32 cannot split (ValueError)."""
    gray = np.full((37, 37), 171, np.uint8)
    gray[12:26, 17:20] = 20  # a dark stroke: a 1
    out = preprocess_image(gray)
    assert out.shape == (28, 28) and out.max() > 100
