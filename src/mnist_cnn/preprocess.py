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
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .datasets import IMAGE_SIZE
from .errors import MnistCnnError

FIT_SIZE = 20  # MNIST's digits fit a 20×20 box inside the 28×28 field
MAX_FILE_BYTES = 20 * 1024 * 1024  # larger than any sensible photo of one digit
MAX_PIXELS = 40_000_000  # refuse decompression bombs well before Pillow's own limit
INK_THRESHOLD = 0.2  # fraction of the ink's range above which a pixel counts as ink when cropping


class ImageError(MnistCnnError):
    """An image that cannot be read or holds no digit."""


def _from_pil(image: Image.Image) -> np.ndarray:
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"image is {image.width}×{image.height} pixels; too large for one digit")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas are paper: composite onto white before going gray.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def load_image(source: str | os.PathLike[str] | bytes) -> Image.Image:
    """Open an image file (or bytes), with clear errors for non-images, empty and huge files."""
    if isinstance(source, bytes):
        data, name = source, "image"
    else:
        path = Path(source)
        name = str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except OSError as err:
            raise ImageError(f"{name}: cannot read ({err.strerror})") from None
        if path.is_dir():
            raise ImageError(f"{name}: is a folder, not an image")
        if size > MAX_FILE_BYTES:
            raise ImageError(
                f"{name}: {size / 2**20:.0f} MiB is too large for a picture of a digit"
            )
        try:
            data = path.read_bytes()
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
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {img.width}×{img.height} pixels is too large for a picture of a digit"
                )
            img.load()
            return img.copy()
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

    # The background is what the border mostly is: its median decides light or dark paper.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if invert is None:
        invert = background > 0.5
    if invert:
        gray = 1.0 - gray
        background = 1.0 - background

    ink = np.clip(gray - background, 0.0, None)
    peak = float(ink.max())
    if peak < 0.1:  # nothing stands out from the paper by more than 10% of full range
        raise ImageError("no digit found: the image is blank (or has almost no contrast)")
    ink /= peak

    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    h, w = crop.shape
    scale = FIT_SIZE / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize(
        (new_w, new_h), Image.Resampling.LANCZOS
    )
    box = np.asarray(small, dtype=np.float32)

    # Paste so the centre of mass lands on the field's centre (clamped to stay inside).
    total = box.sum()
    cy = (box.sum(axis=1) * np.arange(new_h)).sum() / total
    cx = (box.sum(axis=0) * np.arange(new_w)).sum() / total
    top = int(round(IMAGE_SIZE / 2 - 0.5 - cy))
    left = int(round(IMAGE_SIZE / 2 - 0.5 - cx))
    top = min(max(top, 0), IMAGE_SIZE - new_h)
    left = min(max(left, 0), IMAGE_SIZE - new_w)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    out[top : top + new_h, left : left + new_w] = box
    return np.clip(out, 0, 255).round().astype(np.uint8)
