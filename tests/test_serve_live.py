"""``mnist-cnn serve`` as people meet it: a real server, a real headless Chromium, real load.

The browser test needs Debian's ``chromium`` and Playwright for Python; it fails (never skips)
without them. Playwright drives the system browser: no browser download.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from load_serve import run_phases  # noqa: E402

from mnist_cnn.checkpoint import load_model  # noqa: E402

# Count, in the page, the map pixels (all but the white gaps: the colour map has no white) and
# those that differ from the commonest map colour: a blank or frozen panel has none.
COUNT_LIT = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const counts = new Map();
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] === 255 && d[i + 1] === 255 && d[i + 2] === 255) continue;
    const key = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  let total = 0, most = 0;
  for (const n of counts.values()) { total += n; most = Math.max(most, n); }
  return [total - most, total];
}"""


def until(page, condition: str, timeout: float = 20000) -> None:
    """Wait until the JavaScript CONDITION holds in the page.

    Written as a function: Playwright evaluates a bare expression with eval(), which the page's
    Content-Security-Policy forbids (as it should).
    """
    page.wait_for_function(f"() => ({condition})", timeout=timeout)


def shows(page, text: str) -> None:
    """Wait until the page's big prediction reads TEXT."""
    until(page, f"document.getElementById('prediction').textContent === {text!r}")


def stroke(page, points: list[tuple[float, float]], box: dict) -> None:
    """Drag the mouse through POINTS (pad pixels, 0–280) over the drawing pad."""
    sx, sy = box["width"] / 280, box["height"] / 280
    x0, y0 = points[0]
    page.mouse.move(box["x"] + x0 * sx, box["y"] + y0 * sy)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=12)
    page.mouse.up()


def first_mistake(run: Path, mnist) -> int:
    """The index of the first test digit the run's network gets wrong."""
    import torch

    model = load_model(run, "cpu")[0]
    with torch.inference_mode():
        pred = model(mnist.test.images[:2000].float().div(255)).argmax(1)
    return int((pred != mnist.test.labels[:2000]).nonzero()[0])


def test_draw_a_seven_and_watch_the_layers(
    browser, server_url: str, trained_run: Path, mnist, tmp_path: Path
) -> None:
    mistake = first_mistake(trained_run, mnist)
    page = browser.new_page(viewport={"width": 1240, "height": 1000})
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(server_url)
    until(page, "document.getElementById('run-info').textContent.startsWith('run ')")

    box = page.locator("#pad").bounding_box()
    stroke(page, [(70, 60), (215, 60), (120, 245)], box)  # a 7: top bar, then the long stroke
    shows(page, "7")
    until(page, f"({COUNT_LIT})('conv2')[0] > 0")

    assert page.inner_text("#prediction") == "7"
    assert "% sure" in page.inner_text("#confidence")
    assert page.locator("#bars li.top .name").inner_text() == "7"
    assert page.locator("#mistake").is_hidden()
    # Every map of the network, every pixel of each, is painted: conv1's 28×28 maps in a grid
    # wider than tall (the tutorial's 4×8), conv2's 14×14 maps in a square grid.
    meta = load_model(trained_run, "cpu")[1]["model"]
    for layer, side, channels in (
        ("conv1", 28, meta["conv1_channels"]),
        ("conv2", 14, meta["conv2_channels"]),
    ):
        w, h = page.evaluate(f"(c => [c.width, c.height])(document.getElementById('{layer}'))")
        assert w * h >= channels * side * side, layer
        assert (w > h) if layer == "conv1" else (w == h), (layer, w, h)
        lit, total = page.evaluate(f"({COUNT_LIT})('{layer}')")
        assert total == channels * side * side, layer
        assert lit > 0.05 * total, (layer, lit, total)  # the maps respond, not a blank panel
    lit, total = page.evaluate(
        """() => { const d = document.getElementById('input').getContext('2d')
              .getImageData(0, 0, 28, 28).data; let n = 0;
              for (let i = 0; i < d.length; i += 4) if (d[i] > 0) n++; return [n, 784]; }"""
    )
    assert 40 < lit < 400, lit  # a digit's worth of ink in the 28×28 input
    page.screenshot(path=str(tmp_path / "serve.png"))
    if os.environ.get("MNIST_CNN_SCREENSHOT"):
        page.screenshot(path=os.environ["MNIST_CNN_SCREENSHOT"], full_page=True)

    # A 1 drawn after clearing is read as a 1.
    page.click("#clear")
    assert page.inner_text("#prediction") == "–"
    stroke(page, [(145, 35), (138, 245)], box)
    shows(page, "1")

    # A test digit shows its label; the mistake mark agrees with the server's verdict. The
    # third click is steered to a digit the network gets wrong, so a mistake is shown.
    for click in range(3):
        if click == 2:
            page.route(
                "**/api/random-test-digit*",
                lambda route: route.continue_(url=f"{route.request.url}&index={mistake}"),
            )
        with page.expect_response(lambda r: "/api/random-test-digit" in r.url) as info:
            page.click("#random")
        body = info.value.json()
        until(page, f"document.getElementById('source').textContent.includes('#{body['index']},')")
        assert f"labelled {body['label']}" in page.inner_text("#source")
        assert page.inner_text("#prediction") == str(body["prediction"])
        assert page.locator("#mistake").is_visible() == (not body["correct"])
    assert body["index"] == mistake and not body["correct"]
    assert page.locator("#bars li.label .name").inner_text() == str(body["label"])

    # Offline: every request went to this server, and nothing failed in the page.
    assert requests and all(u.startswith(server_url) for u in requests), requests
    assert not problems, problems

    page.goto(server_url + "docs")
    page.wait_for_selector("section.op")
    assert "/api/predict/array" in page.inner_text("main")
    page.close()


def test_load_on_loopback_has_no_errors(server_url: str) -> None:
    """32 clients at once, each sending two pictures per phase: enough to overlap requests (and
    catch answers mixed up between them), not a benchmark (benchmarks/load_serve.py is)."""
    phases = run_phases(server_url, requests=64, concurrency=32, time_limit=240)
    for ph in phases:
        assert ph["errors"] == 0, ph["first_errors"]
        assert ph["unfinished"] == 0, ph
    assert phases[1]["requests"] == phases[2]["requests"] == 64
