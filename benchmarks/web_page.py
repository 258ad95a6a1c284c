"""Time the exported page (``mnist-cnn export RUN --web``) in headless Chromium, from disk.

    .venv/bin/python benchmarks/web_page.py RUN [--screenshot docs/images/web-page.png] \
        [--images 500]

Exports RUN twice (weights as the default chooses, and fp32), opens the default one from
``file://``, draws digits with the mouse and reports the time from a finished stroke to the
answer on screen (preprocessing, the network, the bars and the maps), the network and the
preprocessing alone, and a bare loop of 13.9 M multiply-adds timed in the same page for scale
(a busy machine slows all of them alike). Then the largest logit difference of the fp16 and
fp32 pages from PyTorch on the first test images. Needs Chromium and Playwright (as the tests).
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mnist_cnn.checkpoint import load_model  # noqa: E402
from mnist_cnn.datasets import load_test_split  # noqa: E402
from mnist_cnn.export_web import export_web  # noqa: E402

CHROMIUM = os.environ.get("MNIST_CNN_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]  # fmt: skip

STROKES = {
    "7": [(70, 60), (215, 60), (120, 245)],
    "1": [(145, 35), (138, 245)],
    "4": [(80, 40), (60, 160), (200, 160), (170, 60), (170, 250)],
}

TIMERS = """() => {
  const c = document.getElementById('pad');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const net = MnistNet.load(window.MNIST_CNN_MODEL);
  const median = (a) => a.sort((x, y) => x - y)[a.length >> 1];
  const pre = [], fwd = [], loop = [];
  let x = null;
  for (let r = 0; r < 15; r++) {
    let t = performance.now();
    x = MnistNet.preprocess(MnistNet.grayFromRGBA(d, c.height, c.width), c.height, c.width);
    pre.push(performance.now() - t);
    const f = Float32Array.from(x, (v) => v / 255);
    t = performance.now();
    MnistNet.forward(net, f);
    fwd.push(performance.now() - t);
    const a = new Float32Array(13900000).fill(0.5);
    t = performance.now();
    let s = 0;
    for (let i = 0; i < a.length; i++) s += a[i] * 0.999;
    loop.push(performance.now() - t + (s < 0 ? 1 : 0));
  }
  return [median(pre), median(fwd), median(loop)];
}"""


def main() -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--screenshot", help="save a screenshot of the page with a drawn 7 here")
    ap.add_argument("--images", type=int, default=500, help="test images for the logit check")
    args = ap.parse_args()

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(f"machine: {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pages = {}
        for weights in ("auto", "fp32"):
            done = export_web(args.run, Path(tmp) / weights, weights=weights)
            pages[weights] = done
            print(f"export --weights {weights}: {done.dtype}, {done.bytes / 1e6:.2f} MB")

        page = browser.new_page(viewport={"width": 1240, "height": 1000})
        page.goto((pages["auto"].path / "index.html").as_uri())
        page.wait_for_function("() => document.getElementById('run-info').textContent.length > 9")
        box = page.locator("#pad").bounding_box()
        sx, sy = box["width"] / 280, box["height"] / 280
        read = []
        for _ in range(3):
            for digit, points in STROKES.items():
                page.click("#clear")
                n = page.evaluate("() => window.mnistCnnUpdateTimes.length")
                page.mouse.move(box["x"] + points[0][0] * sx, box["y"] + points[0][1] * sy)
                page.mouse.down()
                for x, y in points[1:]:
                    page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=12)
                page.mouse.up()
                page.wait_for_function(
                    f"() => window.mnistCnnUpdateTimes.length > {n} && "
                    "document.getElementById('prediction').textContent !== '–'"
                )
                page.wait_for_timeout(300)
                read.append((digit, page.inner_text("#prediction")))
        times = page.evaluate("() => window.mnistCnnUpdateTimes")
        pre, fwd, loop = page.evaluate(TIMERS)
        print(f"digits drawn -> read: {' '.join(f'{d}->{r}' for d, r in read)}")
        print(
            f"update (stroke end -> answer on screen), median of {len(times)}: "
            f"{statistics.median(times):.1f} ms (min {min(times):.1f})"
        )
        print(f"preprocessing {pre:.1f} ms, network {fwd:.1f} ms (median of 15)")
        print(f"bare loop of 13.9 M multiply-adds in the same page: {loop:.1f} ms")
        if args.screenshot:
            page.click("#clear")
            points = STROKES["7"]
            page.mouse.move(box["x"] + points[0][0] * sx, box["y"] + points[0][1] * sy)
            page.mouse.down()
            for x, y in points[1:]:
                page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=12)
            page.mouse.up()
            page.wait_for_timeout(1500)
            page.screenshot(path=args.screenshot, full_page=True)
            print(f"wrote {args.screenshot}")
        page.close()

        model, _ = load_model(args.run)
        test = load_test_split(run_dataset_name(args.run))
        images = test.images[: args.images]
        with torch.inference_mode():
            ref = model(images.float().div(255)).double().numpy()
        b64 = base64.b64encode(images.numpy().tobytes()).decode()
        for done in pages.values():
            page = browser.new_page()
            page.goto((done.path / "index.html").as_uri())
            got = page.evaluate(
                """(b64) => Array.from(MnistNet.logitsBatch(
                     MnistNet.load(window.MNIST_CNN_MODEL), MnistNet.decodeBase64(b64)))""",
                b64,
            )
            got = np.asarray(got).reshape(len(images), -1)
            same = int((got.argmax(1) == ref.argmax(1)).sum())
            print(
                f"{done.dtype} page vs PyTorch fp32 on {len(images)} test digits: same class "
                f"{same}/{len(images)}, largest logit difference {np.abs(got - ref).max():.2g}"
            )
            page.close()
        browser.close()
    return 0


def run_dataset_name(run: str) -> str:
    from mnist_cnn.rundir import run_dataset_name as name

    return name(run)


if __name__ == "__main__":
    raise SystemExit(main())
