"""How much accuracy does preprocessing keep on digits made to look like photos of ink on paper?

Takes N MNIST test digits, renders each as a 'photo' (scaled up 4–10×, off centre on a larger
page, dark ink on light paper, uneven light, blur, noise; see ``mnist_cnn.photos``), encodes it
as PNG or JPEG, reads it back through ``load_image``, preprocesses it and classifies it. Prints the
accuracy on the untouched digits and on the photos, side by side, and the photo-only errors.

    .venv/bin/python benchmarks/preprocess_robustness.py RUN [-n 1000] [--format png|jpeg]
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
from PIL import Image

from mnist_cnn.checkpoint import load_model
from mnist_cnn.datasets import load_dataset
from mnist_cnn.photos import photo_like
from mnist_cnn.predict import classify
from mnist_cnn.preprocess import load_image, preprocess_image


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("-n", type=int, default=1000, help="test digits (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["png", "jpeg"], default="png")
    p.add_argument("--data-dir")
    args = p.parse_args()

    model, _ = load_model(args.run)
    test = load_dataset("mnist", args.data_dir, download=False).test
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(test), size=args.n, replace=False)
    digits = test.images[idx].numpy()
    labels = test.labels[idx].numpy()

    t0 = time.perf_counter()
    seen = []
    for d in digits:
        buf = io.BytesIO()
        Image.fromarray(photo_like(d, rng)).save(buf, format=args.format.upper(), quality=90)
        seen.append(preprocess_image(load_image(buf.getvalue())))
    seconds = time.perf_counter() - t0
    plain = classify(model, digits).argmax(1)
    photo = classify(model, np.stack(seen)).argmax(1)
    print(f"untouched digits: accuracy {(plain == labels).mean():.4f} ({args.n} test digits)")
    print(f"as {args.format} photos: accuracy {(photo == labels).mean():.4f}")
    lost = np.flatnonzero((plain == labels) & (photo != labels))
    print(
        f"right untouched but wrong as photos: {len(lost)}; test indices {idx[lost][:20].tolist()}"
    )
    print(f"{seconds / args.n * 1000:.1f} ms per photo to render, encode, read and preprocess")
    return 0


if __name__ == "__main__":
    sys.exit(main())
