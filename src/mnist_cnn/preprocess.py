"""Turn people's pictures of digits into what the network was trained on: MNIST's own preprocessing.

MNIST digits are white ink on black, size-normalised to fit a 20×20 box with their aspect ratio
kept, then placed in a 28×28 field so that their centre of mass sits at the centre. A phone photo
or a scan is dark ink on light paper, off centre, at any size; :func:`preprocess_image` maps one
to the other:

1. grayscale (transparent areas become paper-white);
2. invert when the background is light, so ink is bright;
3. subtract the background level and stretch the ink to full range;
4. crop to the ink's bounding box;
5. scale to fit 20×20, keeping the aspect ratio (antialiased);
6. paste into 28×28 and shift so the centre of mass is at the centre.
"""

from __future__ import annotations

import io
import math
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .datasets import IMAGE_SIZE
from .errors import MnistCnnError

FIT_SIZE = 20  # MNIST's digits fit a 20×20 box inside the 28×28 field
MAX_FILE_BYTES = 20 * 1024 * 1024  # larger than any sensible photo of one digit
MAX_PIXELS = 40_000_000  # refuse decompression bombs well before Pillow's own limit
# Larger pictures are shrunk (by whole-pixel box averaging) before any float work: the digit ends
# as 20×20, and at 1 MP the float arrays of preprocessing stay under ~100 MB.
WORK_PIXELS = 1_000_000
WORK_SIDE = 2_048  # ... and neither side longer than this (a 1 × 16 M strip is not 16 MP of work)
INK_THRESHOLD = 0.2  # fraction of the ink's peak above which a (blurred) pixel counts when cropping
NOISE_SIGMAS = 5.0  # ... and it must stand out from the paper by this many noise deviations
NOISE_FLOOR_SIGMAS = 2.0  # paper up to this many noise deviations above its level is paper
STRONG_PERCENTILE = 95  # this percentile of the ink pixels becomes full white (as MNIST's strokes)
MIN_CONTRAST = 0.1  # ink fainter than 10% of full range: a blank page
CENTRE = 14.0  # MNIST's centres of mass sit at pixel (14, 14) on average (row, column)
RESAMPLE = Image.Resampling.BOX  # area averaging, as a camera's pixels (no ringing)


class ImageError(MnistCnnError):
    """An image that cannot be read or holds no digit."""


def _reduction(width: int, height: int) -> int:
    """The whole factor that brings a picture within WORK_PIXELS and WORK_SIDE (1: none)."""
    by_area = math.ceil(math.sqrt(width * height / WORK_PIXELS))
    return max(1, by_area, math.ceil(max(width, height) / WORK_SIDE))


def shrink_for_work(image: Image.Image) -> Image.Image:
    """``image`` box-averaged by a whole factor to at most WORK_PIXELS (itself if small enough).

    Transparency is averaged premultiplied, so transparent pixels' hidden colour never bleeds
    into the ink.
    """
    factor = _reduction(image.width, image.height)
    if factor == 1:
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBa").reduce(factor).convert("RGBA")
    if image.mode not in ("L", "RGB", "I", "F", "CMYK"):
        image = image.convert("L")
    return image.reduce(factor)


def _from_pil(image: Image.Image) -> np.ndarray:
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"image is {image.width}×{image.height} pixels; too large for one digit")
    image = shrink_for_work(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas are paper: composite onto white before going gray.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def load_image(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Open an image file (or bytes), with clear errors for non-images, empty and huge files.

    A picture of more than ``max_pixels`` is refused from its header, before it is decoded; a
    large one comes back shrunk to about WORK_PIXELS (JPEGs are decoded at reduced scale).
    """
    if isinstance(source, bytes):
        data, name = source, "image"
    else:
        path = Path(source)
        name = str(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except OSError as err:
            raise ImageError(f"{name}: cannot read ({err.strerror})") from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"{name}: is a folder, not an image")
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block, /dev/zero never end
            raise ImageError(f"{name}: not a regular file (a pipe or a device?)")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageError(
                f"{name}: {st.st_size / 2**20:.0f} MiB is too large for a picture of a digit"
            )
        try:
            with open(path, "rb") as fh:  # bounded: the file may grow after the stat
                data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as err:
            raise ImageError(f"{name}: cannot read ({err.strerror})") from None
    if not data:
        raise ImageError(f"{name}: empty file")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(
            f"{name}: {len(data) / 2**20:.0f} MiB is too large for a picture of a digit"
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ImageError(
                    f"{name}: {img.width}×{img.height} pixels is too large for a picture of a digit"
                    f" (at most {max_pixels / 1e6:g} megapixels)"
                )
            factor = _reduction(img.width, img.height)
            if factor > 1 and img.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale
                img.draft(img.mode, (-(-img.width // factor), -(-img.height // factor)))
            img.load()
            small = shrink_for_work(img)
            return small.copy() if small is img else small
    except UnidentifiedImageError:
        raise ImageError(
            f"{name}: not an image Pillow can read (PNG, JPEG, BMP, GIF, ...)"
        ) from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: too many pixels for a picture of a digit") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: damaged image ({err})") from None


def preprocess_image(image: Image.Image | np.ndarray, *, invert: bool | None = None) -> np.ndarray:
    """A picture of one digit -> 28×28 uint8, white ink on black, centred as MNIST's digits are.

    ``image``: a Pillow image, or a 2-D array (uint8 0–255 or float 0–1). ``invert``: None decides
    from the background (light background → invert), True/False forces it.
    """
    if isinstance(image, Image.Image):
        gray = _from_pil(image)
    else:
        arr = np.asarray(image)
        if arr.ndim != 2 or arr.size == 0:
            raise ImageError(f"expected a 2-D grayscale array, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ImageError("image array holds NaN or infinite values")
        gray = arr.astype(np.float32)
        if arr.dtype == np.uint8 or gray.max() > 1.0:
            gray = gray / 255.0
        if gray.min() < 0 or gray.max() > 1:
            raise ImageError("image values must lie in 0–255 (uint8) or 0–1 (float)")
        factor = _reduction(gray.shape[1], gray.shape[0])
        if factor > 1:
            gray = np.asarray(
                Image.fromarray(np.ascontiguousarray(gray)).reduce(factor), dtype=np.float32
            )

    return _mnist_like(gray, invert)


def _box_blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window (edges repeated), by cumulative sums: O(pixels) for any r."""
    if radius < 1:
        return a
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float64)
        hi = np.take(c, np.arange(2 * radius + 1, c.shape[axis]), axis=axis)
        lo = np.take(c, np.arange(0, c.shape[axis] - 2 * radius - 1), axis=axis)
        a = ((hi - lo) / (2 * radius + 1)).astype(np.float32)
    return a


def _border(a: np.ndarray, width: int) -> np.ndarray:
    """Mask of a ``width``-pixel frame around the image: where the paper is expected."""
    mask = np.zeros(a.shape, dtype=bool)
    mask[:width], mask[-width:], mask[:, :width], mask[:, -width:] = True, True, True, True
    return mask


def _paper_level(gray: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """The paper's brightness everywhere: a plane fitted to the frame, so that uneven light
    (one side of a photo brighter than the other) is not mistaken for ink."""
    h, w = gray.shape
    ys, xs = np.nonzero(frame)
    values = gray[frame]
    keep = np.ones(values.shape, dtype=bool)
    coef = np.array([0.0, 0.0, float(np.median(values))])
    if min(h, w) >= 8:
        design = np.stack([ys / h, xs / w, np.ones_like(values)], axis=1)
        for _ in range(3):  # refit without the pixels that look like ink touching the edge
            coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
            resid = values - design @ coef
            spread = 1.4826 * float(np.median(np.abs(resid[keep]))) + 1e-3
            keep = np.abs(resid) < 3 * spread
            if keep.sum() < 0.5 * len(values):
                coef = np.array([0.0, 0.0, float(np.median(values))])
                break
    yy, xx = np.mgrid[0:h, 0:w]
    return (coef[0] * yy / h + coef[1] * xx / w + coef[2]).astype(np.float32)


def _mnist_like(gray: np.ndarray, invert: bool | None) -> np.ndarray:
    h, w = gray.shape
    frame = _border(gray, max(1, min(h, w) // 50))
    # The background is what the border mostly is: its median decides light or dark paper.
    if invert is None:
        invert = float(np.median(gray[frame])) > 0.5
    if invert:
        gray = 1.0 - gray

    ink = gray - _paper_level(gray, frame)
    # Sensor noise, measured on the frame (robustly: the median absolute deviation).
    noise = 1.4826 * float(np.median(np.abs(ink[frame] - np.median(ink[frame]))))
    # Where the ink is: judged on a blurred copy, so that single noisy pixels (or dust) far from
    # the digit do not stretch the crop and shrink the digit.
    radius = max(1, min(h, w) // 100)
    smooth = _box_blur(ink, radius)
    s_frame = smooth[frame]
    s_noise = 1.4826 * float(np.median(np.abs(s_frame - np.median(s_frame))))
    peak = float(np.percentile(smooth, 99.9)) if smooth.size > 1000 else float(smooth.max())
    if peak < max(MIN_CONTRAST, NOISE_SIGMAS * s_noise):
        raise ImageError("no digit found: the image is blank (or has almost no contrast)")
    mask = smooth > max(INK_THRESHOLD * peak, NOISE_SIGMAS * s_noise)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom = max(rows[0] - radius, 0), min(rows[-1] + radius + 1, h)
    left, right = max(cols[0] - radius, 0), min(cols[-1] + radius + 1, w)

    # Ink from 0 (paper, with its noise cut away) to 1 (the digit's strong strokes).
    floor = NOISE_FLOOR_SIGMAS * noise
    crop = ink[top:bottom, left:right]
    strong = float(np.percentile(crop[mask[top:bottom, left:right]], STRONG_PERCENTILE)) - floor
    crop = np.clip((crop - floor) / max(strong, 1e-3), 0.0, 1.0)

    ch, cw = crop.shape
    scale = FIT_SIZE / max(ch, cw)
    new_w, new_h = max(1, round(cw * scale)), max(1, round(ch * scale))
    small = Image.fromarray(crop.astype(np.float32)).resize((new_w, new_h), RESAMPLE)
    box = np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0) * 255.0
    if box.sum() <= 0:
        raise ImageError("no digit found: the ink vanishes when scaled down to 20×20")

    # Paste so the centre of mass lands where MNIST's do, (14, 14) (clamped to stay inside).
    total = box.sum()
    cy = (box.sum(axis=1) * np.arange(new_h)).sum() / total
    cx = (box.sum(axis=0) * np.arange(new_w)).sum() / total
    top = int(round(CENTRE - cy))
    left = int(round(CENTRE - cx))
    top = min(max(top, 0), IMAGE_SIZE - new_h)
    left = min(max(left, 0), IMAGE_SIZE - new_w)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    out[top : top + new_h, left : left + new_w] = box
    return np.clip(out, 0, 255).round().astype(np.uint8)
