"""Pictures that are not digits, made deterministically: the "not a digit" score is tested on them.

Letters in several fonts, symbols, scribbles, shapes and photos of empty or ruled paper, each as
a drawing (clean dark ink on white) and as a photo (paper tone, uneven light, blur, noise), the
way people's pictures reach ``predict``. Letters and shapes that are digits in someone's
handwriting (O, l, I, S, Z, B, g, q, b, G, a circle, a lone stroke) are left out: a network
that calls them digits is right to.

    from tests.nondigits import non_digit_pictures
    pictures = non_digit_pictures(200, seed=0)   # [(kind, uint8 gray picture), ...]
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 112  # canvas side in pixels: big enough for strokes, small enough to preprocess fast
DIGIT_LIKE = set("OoDQIlijJSsZzBbgqGT")  # letters that are a digit in some handwriting
LETTERS = [c for c in string.ascii_letters if c not in DIGIT_LIKE]
SYMBOLS = list("+×=#%&@?!*$€§¶©∞~→←↑♥★☺✓✗πΣΩλ")
FONT_FOLDERS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation")
FONT_NAMES = (
    "DejaVuSans.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSans-ExtraLight.ttf",
    "LiberationSerif-Regular.ttf",
    "LiberationSans-BoldItalic.ttf",
    "LiberationSansNarrow-Regular.ttf",
    "LiberationMono-Regular.ttf",
)


@lru_cache(maxsize=1)
def font_paths() -> tuple[str, ...]:
    """The fonts found on this machine (Pillow's own font is used besides them)."""
    found = []
    for name in FONT_NAMES:
        for folder in FONT_FOLDERS:
            path = Path(folder) / name
            if path.is_file():
                found.append(str(path))
    return tuple(found)


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    paths = font_paths()
    k = int(rng.integers(len(paths) + 1))
    if k == len(paths):
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(paths[k], size=size)


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (SIZE, SIZE), 0)  # ink as brightness: 0 paper, 255 ink
    return img, ImageDraw.Draw(img)


def _glyph(chars: list[str]) -> Callable[[np.random.Generator], Image.Image]:
    def draw(rng: np.random.Generator) -> Image.Image:
        img, d = _canvas()
        ch = chars[int(rng.integers(len(chars)))]
        font = _font(rng, int(rng.integers(60, 90)))
        # DejaVu has every symbol; a font without one draws a box, which is no digit either.
        box = d.textbbox((0, 0), ch, font=font)
        x = (SIZE - (box[2] - box[0])) / 2 - box[0]
        y = (SIZE - (box[3] - box[1])) / 2 - box[1]
        d.text((x, y), ch, fill=255, font=font)
        return img.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)

    return draw


def _points(rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
    """A smooth random path: a walk whose heading drifts."""
    x, y = rng.uniform(30, SIZE - 30, size=2)
    heading = rng.uniform(0, 2 * math.pi)
    pts = [(float(x), float(y))]
    for _ in range(n):
        heading += rng.normal(0, 0.6)
        x = float(np.clip(x + 9 * math.cos(heading), 8, SIZE - 8))
        y = float(np.clip(y + 9 * math.sin(heading), 8, SIZE - 8))
        pts.append((x, y))
    return pts


def _scribble(rng: np.random.Generator) -> Image.Image:
    img, d = _canvas()
    for _ in range(int(rng.integers(1, 4))):
        d.line(_points(rng, int(rng.integers(25, 60))), fill=255, width=int(rng.integers(4, 9)))
    return img


def _shape(rng: np.random.Generator) -> Image.Image:
    img, d = _canvas()
    w = int(rng.integers(5, 9))
    c, r = SIZE / 2, float(rng.uniform(30, 45))
    kind = int(rng.integers(8))
    if kind == 0:  # square or rectangle
        d.rectangle((c - r, c - r * rng.uniform(0.6, 1), c + r, c + r * 0.8), outline=255, width=w)
    elif kind == 1:  # triangle
        d.polygon([(c, c - r), (c - r, c + r * 0.8), (c + r, c + r * 0.8)], outline=255, width=w)
    elif kind == 2:  # a cross in a box
        d.rectangle((c - r, c - r, c + r, c + r), outline=255, width=w)
        d.line((c - r, c - r, c + r, c + r), fill=255, width=w)
        d.line((c - r, c + r, c + r, c - r), fill=255, width=w)
    elif kind == 3:  # star
        pts = [
            (c + r * (1 if k % 2 == 0 else 0.45) * math.cos(k * math.pi / 5 - math.pi / 2),
             c + r * (1 if k % 2 == 0 else 0.45) * math.sin(k * math.pi / 5 - math.pi / 2))
            for k in range(10)
        ]  # fmt: skip
        d.polygon(pts, outline=255, width=w)
    elif kind == 4:  # a grid (tic-tac-toe)
        for t in (-r / 3, r / 3):
            d.line((c + t, c - r, c + t, c + r), fill=255, width=w)
            d.line((c - r, c + t, c + r, c + t), fill=255, width=w)
    elif kind == 5:  # zigzag
        pts = [(c - r + k * r / 3, c + (r / 2 if k % 2 else -r / 2)) for k in range(7)]
        d.line(pts, fill=255, width=w)
    elif kind == 6:  # spiral
        pts = [
            (c + (4 + 3.2 * t) * math.cos(t), c + (4 + 3.2 * t) * math.sin(t))
            for t in np.linspace(0, 4 * math.pi, 120)
        ]
        d.line(pts, fill=255, width=w - 2)
    else:  # hatching
        for k in range(-3, 4):
            off = k * r / 3.5
            d.line((c - r + off, c + r, c + off + r * 0.4, c - r), fill=255, width=w - 2)
    return img.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)


def _paper(rng: np.random.Generator) -> Image.Image:
    """What a camera pointed at paper sees without a digit: ruled lines, a smudge, a stain."""
    img, d = _canvas()
    kind = int(rng.integers(4))
    if kind == 0:  # ruled paper
        gap = int(rng.integers(14, 22))
        for y in range(int(rng.integers(4, gap)), SIZE, gap):
            d.line((0, y, SIZE, y), fill=int(rng.integers(90, 160)), width=2)
    elif kind == 1:  # squared paper
        gap = int(rng.integers(12, 18))
        for t in range(int(rng.integers(2, gap)), SIZE, gap):
            d.line((0, t, SIZE, t), fill=110, width=1)
            d.line((t, 0, t, SIZE), fill=110, width=1)
    elif kind == 2:  # a smudge: a rubbed-out stroke
        d.line(_points(rng, 12), fill=int(rng.integers(80, 150)), width=int(rng.integers(10, 18)))
        img = img.filter(ImageFilter.GaussianBlur(4))
    else:  # a coffee stain: a blurred ring
        c, r = rng.uniform(40, 72, size=2), float(rng.uniform(20, 35))
        d.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=int(rng.integers(80, 150)))
        img = img.filter(ImageFilter.GaussianBlur(6))
    return img


KINDS: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "letter": _glyph(LETTERS),
    "symbol": _glyph(SYMBOLS),
    "scribble": _scribble,
    "shape": _shape,
    "paper": _paper,
}


def _as_photo(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ink (0–1) as a photo: paper and ink tones, uneven light, a little blur, sensor noise."""
    paper, dark = rng.uniform(0.7, 0.95), rng.uniform(0.05, 0.35)
    gy, gx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    angle = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(-0.12, 0.12) * (math.cos(angle) * gx + math.sin(angle) * gy - 0.5)
    img = (paper + (dark - paper) * ink) * light
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    img = np.asarray(pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))), np.float32) / 255
    img = img + rng.normal(0, rng.uniform(0.01, 0.04), size=img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def non_digit_pictures(n: int = 200, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``n`` pictures that are not digits, as (kind, uint8 grayscale picture); the same for a
    given (n, seed) on machines with the same fonts. Kinds take turns; every other picture is a
    drawing (dark ink on white), the rest photos."""
    rng = np.random.default_rng(seed)
    names = list(KINDS)
    out = []
    for i in range(n):
        kind = names[i % len(names)]
        ink = np.asarray(KINDS[kind](rng), dtype=np.float32) / 255.0
        if (i // len(names)) % 2 == 0:
            out.append((f"{kind} drawing", ((1.0 - ink) * 255).round().astype(np.uint8)))
        else:
            out.append((f"{kind} photo", _as_photo(ink, rng)))
    return out
