"""Turn people's pictures of digits into what the network was trained on: MNIST's own preprocessing.

MNIST digits are white ink on black, size-normalised to fit a 20×20 box with their aspect ratio
kept, then placed in a 28×28 field so that their centre of mass sits at the centre. A phone photo
or a scan is dark ink on light paper, off centre, at any size; :func:`preprocess_image` maps one
to the other:

1. upright (EXIF orientation), grayscale at any bit depth (transparent areas become
   background, so that ink on a transparent sheet stays ink);
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
from PIL import Image, ImageOps, UnidentifiedImageError

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
PAPER_BINS = 32  # histogram of the frame's darker half, to find the paper's level
PAPER_WINDOW = 0.1  # pixels this close (as a share of the frame's range) seed the paper's fit
PAPER_FLOOR = 0.01  # paper within this of its plane is paper, however clean (8-bit steps)
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
        # Premultiplied, so transparent pixels' colours do not bleed into the averages (Pillow
        # converts only RGBA to RGBa: gray and palette images with alpha go through RGBA).
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        return rgba.convert("RGBa").reduce(factor).convert("RGBA")
    if image.mode.startswith("I;16"):
        image = image.convert("I")  # keep 16 bits; reduce() takes 32-bit integers
    if image.mode not in ("L", "RGB", "I", "F", "CMYK"):
        image = image.convert("L")
    return image.reduce(factor)


def _from_pil(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> float32 (H, W) gray in [0, 1], bit depth and transparency respected."""
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"image is {image.width}×{image.height} pixels; too large for one digit")
    image = shrink_for_work(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        return _composite(np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return _deep_gray(image)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _composite(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) in [0, 1] -> gray: transparent areas become a background that the visible
    strokes stand out from. Ink on a transparent sheet is ink whatever its colour: light strokes
    (white ink) go on black, dark ones on white (``alpha`` weighs each pixel's say)."""
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # as Pillow's "L"
    weight = float(alpha.sum())
    light = weight > 0 and float((gray * alpha).sum()) / weight > 0.5
    background = 0.0 if light else 1.0
    return (alpha * gray + (1.0 - alpha) * background).astype(np.float32)


def _deep_gray(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float images -> [0, 1], not clipped to 8 bits: 16-bit by
    65535; floats already in [0, 1] as they are, in [0, 255] by 255; anything else by its
    extent."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2:
        arr = np.asarray(image.convert("F"), dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ImageError("image holds NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if image.mode == "F" and lo >= 0.0 and hi <= 1.0:
        return arr.astype(np.float32)
    if image.mode.startswith("I;16"):
        return (arr / 65535.0).astype(np.float32)
    if image.mode == "I" and lo >= 0.0 and hi <= 65535.0:  # Pillow's mode for 16-bit PNGs too
        return (arr / (65535.0 if hi > 255.0 else 255.0)).astype(np.float32)
    if lo >= 0.0 and hi <= 255.0:
        return (arr / 255.0).astype(np.float32)
    return ((arr - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def load_image(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Open an image file (or bytes), with clear errors for non-images, empty and huge files.

    A picture of more than ``max_pixels`` is refused from its header, before it is decoded; a
    large one comes back shrunk to about WORK_PIXELS (JPEGs are decoded at reduced scale) and
    turned upright by its EXIF orientation.
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
            # A phone stores its photo sideways with an EXIF note on how to turn it upright
            # (a copy either way, detached from the file).
            upright = ImageOps.exif_transpose(img)
            return shrink_for_work(upright)
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
        # The range is checked on the values given, before float32 (1e300 would become inf).
        if float(arr.min()) < 0 or float(arr.max()) > 255:
            raise ImageError("image values must lie in 0–255 (uint8) or 0–1 (float)")
        gray = arr.astype(np.float32)
        if arr.dtype == np.uint8 or gray.max() > 1.0:
            gray = gray / 255.0
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


def _paper_level(gray: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's brightness everywhere, and which frame pixels are paper.

    A plane is fitted to the frame, so that uneven light (one side of a photo brighter than the
    other) is not mistaken for ink. Ink may cover much of the frame (a tight crop, a cell cut
    from a form), so the paper is not the frame's median: it is the most common level in the
    darker half of the frame's range (the ink is the brighter side here, inverted if need be).
    The plane is fitted to the pixels near that level, then refitted on those within 3 noise
    deviations of the plane (plus a floor for 8-bit steps and clipped highlights).
    Returns the level (H, W) and a mask over ``gray[frame]`` of the pixels taken as paper.
    """
    h, w = gray.shape
    ys, xs = np.nonzero(frame)
    values = gray[frame]
    design = np.stack([ys / h, xs / w, np.ones_like(values)], axis=1)
    lo, hi = float(values.min()), float(values.max())
    # A floor well above float32's resolution near 1 (and below one 8-bit step, 1/255): a
    # flat frame would otherwise ask for 32 bins inside a range float32 cannot split.
    span = max(hi - lo, 1e-3)
    counts, edges = np.histogram(values, bins=PAPER_BINS, range=(lo, lo + span / 2))
    counts = np.convolve(counts, [1, 2, 1], mode="same")  # one noisy bin is no peak
    peak = int(np.argmax(counts))
    level = float(edges[peak] + edges[peak + 1]) / 2
    near = np.abs(values - level) < PAPER_WINDOW * span
    coef = np.array([0.0, 0.0, float(np.median(values[near]))])
    sigma = _robust_sigma(values[near])
    keep = near
    for _ in range(3):
        keep = np.abs(values - design @ coef) < 3 * sigma + PAPER_FLOOR
        if min(h, w) < 8 or keep.sum() < 0.1 * len(values):
            break  # too little to fit a tilt: a flat level it is
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        sigma = _robust_sigma((values - design @ coef)[keep])
    yy, xx = np.mgrid[0:h, 0:w]
    level = (coef[0] * yy / h + coef[1] * xx / w + coef[2]).astype(np.float32)
    return level, keep


def _robust_sigma(values: np.ndarray) -> float:
    """The standard deviation of Gaussian noise, estimated from the median absolute deviation."""
    if values.size == 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _mnist_like(gray: np.ndarray, invert: bool | None) -> np.ndarray:
    h, w = gray.shape
    frame = _border(gray, max(1, min(h, w) // 50))
    # The background is what the border mostly is: its median decides light or dark paper.
    if invert is None:
        invert = float(np.median(gray[frame])) > 0.5
    if invert:
        gray = 1.0 - gray

    level, paper = _paper_level(gray, frame)
    ink = gray - level
    # Sensor noise, measured on the frame's paper (ink touching the edge is left out).
    noise = _robust_sigma(ink[frame][paper])
    # Where the ink is: judged on a blurred copy, so that single noisy pixels (or dust) far from
    # the digit do not stretch the crop and shrink the digit.
    radius = max(1, min(h, w) // 100)
    smooth = _box_blur(ink, radius)
    s_noise = _robust_sigma(smooth[frame][paper])
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
