"""Make an MNIST digit look like a photo of dark ink on paper, to test preprocessing on.

A digit is scaled up (4–10×), placed off centre on a larger page, inverted to dark ink on light
paper with a random paper and ink tone, lit unevenly, blurred a little and given sensor noise.
:func:`mnist_cnn.preprocess.preprocess_image` should undo all of it; the tests and
``benchmarks/preprocess_robustness.py`` measure how well it does.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def photo_like(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 28×28 uint8 MNIST digit -> a larger uint8 grayscale "photo" of it (dark ink on paper)."""
    digit = np.asarray(digit, dtype=np.uint8)
    scale = rng.uniform(4.0, 10.0)
    side = int(round(28 * scale))
    big = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    # A page 1.2–2× the digit's size, the digit anywhere on it (off centre).
    page_h = int(side * rng.uniform(1.2, 2.0))
    page_w = int(side * rng.uniform(1.2, 2.0))
    top = int(rng.integers(0, page_h - side + 1))
    left = int(rng.integers(0, page_w - side + 1))
    ink = np.zeros((page_h, page_w), dtype=np.float32)
    ink[top : top + side, left : left + side] = np.asarray(big, dtype=np.float32) / 255.0
    ink = np.clip(ink, 0.0, 1.0)
    # Paper and ink tones: contrast anywhere from strong to modest.
    paper = rng.uniform(0.7, 0.97)
    dark = rng.uniform(0.02, 0.35)
    # Uneven light: a gentle linear gradient across the page (±6% of full range).
    gy, gx = np.mgrid[0:page_h, 0:page_w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * gx / page_w + np.sin(angle) * gy / page_h) - 0.5
    light = 1.0 + rng.uniform(-0.12, 0.12) * ramp
    img = (paper + (dark - paper) * ink) * light
    # A little optical blur, then sensor noise.
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    pil = pil.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.0, 0.6) * scale / 4))
    img = np.asarray(pil, dtype=np.float32) / 255.0
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.05), size=img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)


def tight_crop_like(
    digit: np.ndarray, rng: np.random.Generator, *, blur: bool = False, noise: bool = False
) -> np.ndarray:
    """A 28×28 uint8 MNIST digit -> a "cell cut from a form": cropped to its ink, so the strokes
    touch the image's edges, scaled up 3–8×, dark ink on white, optionally blurred and noisy."""
    digit = np.asarray(digit, dtype=np.uint8)
    rows = np.flatnonzero(digit.max(axis=1) > 0)
    cols = np.flatnonzero(digit.max(axis=0) > 0)
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = rng.uniform(3.0, 8.0)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    big = Image.fromarray(255 - crop).resize(size, Image.Resampling.BICUBIC)
    if blur:
        big = big.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.5, 1.2) * scale / 3))
    img = np.asarray(big, dtype=np.float32) / 255.0
    if noise:
        img = img + rng.normal(0.0, rng.uniform(0.02, 0.06), size=img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)
