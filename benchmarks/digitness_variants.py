"""Variants of the not-a-digit score, side by side on one run: which neighbour (k), how many
shifted views of the picture, fc1 fused with another layer (pool2, or conv3 where the
network has it), and (``--more``) other statistics alone and fused with the stored score.

Each variant is shown at two thresholds: the share of validation digits the library flags
(``--val-rates``, what a user gets; with ``--val-skip S`` the validation digits are scored past
their nearest S references, as the library's threshold is set, VAL_SKIP = 1), and, for a fair
comparison, the threshold that flags ``--test-rate`` of the MNIST test digits (never used to
choose a threshold). Non-digit pictures come from ``tests/nondigits.py`` with ``--seeds`` (0 and
1: the design set; benchmarks/digitness.py reports seeds 2 and 3, held out).

    .venv/bin/python benchmarks/digitness_variants.py RUN [--seeds 0 1] [-n 600] [--fuse conv3]
        [--more]

``--more``: other statistics beside the stored score (fc1, nearest neighbour, 5 views), alone
and fused with it (log validation ranks summed, the other at weight 1 and 0.5): the share of
the 5 views whose prediction is the unmoved picture's; the share of the best view's 10 nearest
training digits whose label is its prediction; the length of the unit fc1 vector outside its
16, 32, 64 or 128 leading directions, those fewer than fc1's width (as in ViM, Wang et al.
2022: features off the training digits' main subspace), the smallest of the 5 views; the
maximum softmax probability and the energy of the unmoved picture; the 10th neighbour's
similarity; the largest pixel cosine between the picture and its 5 nearest training digits in
fc1 (both blurred: do the digits the network finds nearest also look like it?); and, for a
network with dropout (the seed's), its own dropout on the unmoved picture's fc1, 32 masks:
minus the mutual information and minus the entropy of the mean prediction (MC dropout).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mnist_cnn import digitness as dg  # noqa: E402
from mnist_cnn.checkpoint import load_model  # noqa: E402
from mnist_cnn.datasets import load_dataset, to_float  # noqa: E402
from mnist_cnn.errors import MnistCnnError  # noqa: E402
from mnist_cnn.photos import photo_like  # noqa: E402
from mnist_cnn.preprocess import ImageError, preprocess_image  # noqa: E402
from tests.nondigits import non_digit_pictures  # noqa: E402

NINE = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))


def moved(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    pad = F.pad(images, (1, 1, 1, 1))
    return pad[:, 1 - dy : 29 - dy, 1 - dx : 29 - dx]


def layer_features(model, images: torch.Tensor, layer: str) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), 1000):
            _, acts = model(to_float(images[s : s + 1000]), return_activations=True)
            out.append(acts[layer].float().reshape(len(acts[layer]), -1))
    return torch.cat(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--data-dir")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("-n", type=int, default=600, help="non-digit pictures per seed (600)")
    p.add_argument("--val-rates", type=float, nargs="+", default=[0.014, 0.015])
    p.add_argument(
        "--val-skip",
        type=int,
        default=0,
        choices=range(5),
        metavar="S",
        help="fc1 variants: validation scored by the (k + S)-th neighbour (0)",
    )
    p.add_argument("--test-rate", type=float, default=0.019)
    p.add_argument("--pool2", action="store_true", help="also fc1 fused with pool2")
    p.add_argument("--fuse", help="also fc1 fused with this layer (e.g. conv3); --pool2: pool2")
    p.add_argument("--more", action="store_true", help="other statistics, alone and fused")
    args = p.parse_args()
    try:
        model, _ = load_model(args.run)
        data = load_dataset("mnist", args.data_dir, download=False)
    except MnistCnnError as err:  # no such run, a damaged model file, no MNIST: one line
        print(f"digitness_variants: {err}", file=sys.stderr)
        return 1
    model.eval()
    rng = np.random.default_rng(0)
    photos = [preprocess_image(photo_like(d.numpy(), rng)) for d in data.test.images[:600]]
    others = []
    for seed in args.seeds:
        for _, picture in non_digit_pictures(args.n, seed=seed):
            # Refused as blank: not scored here (benchmarks/digitness.py counts them).
            with contextlib.suppress(ImageError):
                others.append(preprocess_image(picture))
    sets = {
        "val": data.val.images,
        "test": data.test.images,
        "photo": torch.as_tensor(np.stack(photos)),
        "non-digit": torch.as_tensor(np.stack(others)),
    }
    print(f"{args.run}: {len(others)} non-digit pictures (seeds {args.seeds}), 600 photo-like")

    def neighbours(layer: str) -> dict[str, torch.Tensor]:
        """Per set: (9 views, N, 5) similarities to the 5 nearest references."""
        units = F.normalize(layer_features(model, data.train.images, layer), dim=1)
        proj = dg.leading_directions(units, dg.DIMS if layer == "fc1" else 256)
        refs = F.normalize(units @ proj, dim=1).half().float()
        del units
        out = {}
        for name, images in sets.items():
            views = []
            for dy, dx in NINE:
                q = F.normalize(layer_features(model, moved(images, dy, dx), layer) @ proj, dim=1)
                views.append(torch.cat([(q[s : s + 256] @ refs.T).topk(5, dim=1).values
                                        for s in range(0, len(q), 256)]))  # fmt: skip
            out[name] = torch.stack(views)
        return out

    def show(label: str, sc: dict[str, np.ndarray]) -> None:
        cells = []
        for rate in args.val_rates:
            t = np.quantile(sc["val"], rate)
            cells.append(f"val {100 * rate:g}%: test {100 * (sc['test'] < t).mean():.2f}%, photo "
                         f"{100 * (sc['photo'] < t).mean():.1f}%, "
                         f"non-digits {100 * (sc['non-digit'] < t).mean():.1f}%")  # fmt: skip
        t = np.quantile(sc["test"], args.test_rate)
        cells.append(f"at test {100 * args.test_rate:g}%: "
                     f"photo {100 * (sc['photo'] < t).mean():.1f}%, "
                     f"non-digits {100 * (sc['non-digit'] < t).mean():.1f}%")  # fmt: skip
        print(f"{label:28s} " + " | ".join(cells), flush=True)

    fc1 = neighbours("fc1")
    for k in (1, 3, 5):
        if k + args.val_skip > 5:  # five neighbours kept
            continue
        for views in (1, 5, 9):
            best = {n: v[:views, :, k - 1].max(0).values.numpy() for n, v in fc1.items()}
            best["val"] = fc1["val"][:views, :, k - 1 + args.val_skip].max(0).values.numpy()
            show(f"fc1 k={k}, {views} view(s)", best)

    def ranks(sc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each score as its rank among the validation digits' (0, 1], higher: more digit-like."""
        val = np.sort(sc["val"])
        return {n: (np.searchsorted(val, s, side="right") + 0.5) / (len(val) + 1)
                for n, s in sc.items()}  # fmt: skip

    stored = {n: v[:5, :, 0].max(0).values.numpy() for n, v in fc1.items()}
    other = "pool2" if args.pool2 else args.fuse
    if other:
        second = {n: v[:5, :, 0].max(0).values.numpy() for n, v in neighbours(other).items()}
        show(f"{other} k=1, 5 views", second)
        a, b = ranks(stored), ranks(second)
        show(f"fc1 + {other} (log ranks)", {n: np.log(a[n]) + np.log(b[n]) for n in a})
    if args.more:
        more = more_statistics(model, data, sets)
        a = ranks(stored)
        for label, sc in more.items():
            show(label, sc)
            b = ranks(sc)
            for w in (1.0, 0.5):
                show(f"stored + {w:g} x {label}", {n: np.log(a[n]) + w * np.log(b[n]) for n in a})
    return 0


def more_statistics(model, data, sets: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """Per statistic, per set: one score per picture, higher for more digit-like (--more)."""
    train = layer_features(model, data.train.images, "fc1")
    units = F.normalize(train, dim=1)
    proj = dg.leading_directions(units, dg.DIMS)
    refs = F.normalize(units @ proj, dim=1).half().float()
    lead = dg.leading_directions(units, 128)
    labels = data.train.labels.long()
    train_pixels = blurred_units(data.train.images)
    del train, units
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, images in sets.items():
        n = len(images)
        feats, logits = [], []
        with torch.inference_mode():
            views = dg.shifted_views(images, 1)
            for s in range(0, len(views), 1000):
                lg, acts = model(to_float(views[s : s + 1000]), return_activations=True)
                feats.append(acts["fc1"].float().reshape(len(lg), -1))
                logits.append(lg.float())
        fc1 = torch.cat(feats)
        u, lg = F.normalize(fc1, dim=1), torch.cat(logits)
        q = F.normalize(u @ proj, dim=1)
        top = [(q[s : s + 256] @ refs.T).topk(10, dim=1) for s in range(0, len(q), 256)]
        sims = torch.cat([t.values for t in top]).reshape(5, n, 10)
        idx = torch.cat([t.indices for t in top]).reshape(5, n, 10)
        best = sims[:, :, 0].argmax(0)
        pred = lg.argmax(1).reshape(5, n)
        rows = torch.arange(n)
        kept = pred[best, rows]
        out.setdefault("views agreeing", {})[name] = (pred == pred[0]).float().mean(0).numpy()
        out.setdefault("10 neighbours' labels", {})[name] = (
            (labels[idx[best, rows]] == kept[:, None]).float().mean(1).numpy()
        )
        for d in (d for d in (16, 32, 64, 128) if d < u.shape[1]):  # fewer than fc1's width
            off = 1 - ((u @ lead[:, :d]) ** 2).sum(1)  # squared length off the subspace
            out.setdefault(f"off {d} directions", {})[name] = (
                -off.reshape(5, n).min(0).values.numpy()
            )
        first = lg.reshape(5, n, 10)[0]
        out.setdefault("max softmax", {})[name] = first.softmax(1).max(1).values.numpy()
        out.setdefault("energy", {})[name] = torch.logsumexp(first, 1).numpy()
        out.setdefault("10th neighbour", {})[name] = sims[:, :, 9].max(0).values.numpy()
        # Do the network's nearest training digits also look like the picture? The largest
        # pixel cosine (both blurred) between the picture and its 5 nearest in fc1.
        near = idx[best, rows][:, :5]
        mine = blurred_units(images)
        out.setdefault("pixels of the 5 fc1 neighbours", {})[name] = torch.cat(
            [
                (train_pixels[near[s : s + 256]] * mine[s : s + 256, None]).sum(-1).max(1).values
                for s in range(0, n, 256)
            ]  # fmt: skip
        ).numpy()
        p = float(model.config.dropout)  # both networks: fc1 → ReLU → dropout → fc2
        if p > 0:  # the network's own dropout, 32 masks on fc1 (Gal & Ghahramani, 2016)
            h = fc1[:n]  # the unmoved picture's (the views come view by view)
            gen = torch.Generator().manual_seed(0)
            with torch.inference_mode():
                probs = torch.stack([
                    model.fc2(h * (torch.rand(h.shape, generator=gen) >= p) / (1 - p)).softmax(1)
                    for _ in range(32)
                ])  # fmt: skip
            mean = probs.mean(0)
            entropy = -(mean * mean.clamp_min(1e-12).log()).sum(1)
            expected = -(probs * probs.clamp_min(1e-12).log()).sum(2).mean(0)
            out.setdefault("MC dropout: mutual information", {})[name] = -(
                entropy - expected
            ).numpy()
            out.setdefault("MC dropout: predictive entropy", {})[name] = -entropy.numpy()
    return out


def blurred_units(images: torch.Tensor) -> torch.Tensor:
    """(N, 784) unit rows of the images blurred twice by a 3×3 binomial kernel."""
    k = torch.tensor([1.0, 2.0, 1.0])
    k = ((k[:, None] * k[None]) / 16).view(1, 1, 3, 3)
    x = to_float(images).unsqueeze(1)
    for _ in range(2):
        x = F.conv2d(x, k, padding=1)
    return F.normalize(x.flatten(1), dim=1)


if __name__ == "__main__":
    raise SystemExit(main())
