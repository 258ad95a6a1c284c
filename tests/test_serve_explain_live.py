"""The page's "what made it say this" toggle and its "not sure this is a digit" state, in a real
headless Chromium against a real server (fails, never skips, without Chromium/Playwright)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.test_serve_live import shows, stroke, until

# Pixels of the overlay: how many are tinted red (for) and blue (against), and where the
# reddest one is.
OVERLAY = """() => {
  const d = document.getElementById('attribution').getContext('2d')
    .getImageData(0, 0, 28, 28).data;
  let red = 0, blue = 0, best = -1, at = -1;
  for (let i = 0; i < 784; i++) {
    const [r, g, b, a] = [d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]];
    if (a > 20 && r > b) red++;
    if (a > 20 && b > r) blue++;
    if (r > b && a > best) { best = a; at = i; }
  }
  return [red, blue, at];
}"""


class ApiTraffic:
    """The page's requests to the API, watched from the page's start: which are open, and when
    one last began or ended."""

    def __init__(self, page) -> None:
        self.page, self.open, self.last = page, set(), time.monotonic()
        page.on("request", self._began)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    def _began(self, r) -> None:
        if "/api/" in r.url:
            self.open.add(r)
            self.last = time.monotonic()

    def _ended(self, r) -> None:
        if "/api/" in r.url:
            self.open.discard(r)
            self.last = time.monotonic()

    def settle(self, quiet_ms: int = 400, timeout_s: float = 20.0) -> None:
        """Wait until the drawing's last update (its debounced request, or one queued behind an
        answer) is done: no request open, none began or ended for ``quiet_ms``, and the page
        has none queued or timed. (The network alone does not tell: a loaded machine can take
        longer than ``quiet_ms`` to draw an answer before it sends the request queued behind it.)
        """
        deadline = time.monotonic() + timeout_s
        while (
            self.open
            or time.monotonic() - self.last < quiet_ms / 1000
            or not self.page.evaluate("window.mnistCnnIdle()")
        ):
            assert time.monotonic() < deadline, "the page kept asking the server"
            self.page.wait_for_timeout(50)


INPUT = """() => Array.from(document.getElementById('input').getContext('2d')
  .getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0))"""


@pytest.mark.slow
def test_toggle_overlays_what_made_it_say_this(browser, server_url: str, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1240, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    traffic = ApiTraffic(page)
    page.goto(server_url)
    until(page, "document.getElementById('run-info').textContent.startsWith('run ')")
    box = page.locator("#pad").bounding_box()
    stroke(page, [(70, 60), (215, 60), (120, 245)], box)  # a 7
    shows(page, "7")
    assert page.evaluate(OVERLAY)[:2] == [0, 0]  # off: nothing over the input

    traffic.settle()  # the drawing's own requests are over: what follows is the toggle's
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/" in r.url else None)
    with page.expect_response(lambda r: "explain=true" in r.url) as info:
        page.check("#explain")
    body = info.value.json()
    assert body["prediction"] == 7 and body["attribution"]["shape"] == [1, 28, 28]
    until(page, f"({OVERLAY})()[0] > 0")
    page.wait_for_timeout(300)
    assert len(asked) == 1  # one request per update
    red, blue, at = page.evaluate(OVERLAY)
    ink = page.evaluate(INPUT)
    assert 10 < red < 500
    assert ink[at] > 0  # the strongest evidence for the 7 lies on its ink
    if os.environ.get("MNIST_CNN_SCREENSHOT_EXPLAIN"):
        page.locator("main").screenshot(path=os.environ["MNIST_CNN_SCREENSHOT_EXPLAIN"])

    page.uncheck("#explain")
    until(page, f"({OVERLAY})()[0] === 0")
    assert page.locator("#not-digit").is_hidden()
    assert not problems, problems
    page.close()


@pytest.mark.slow
def test_not_a_digit_state(browser, server_url: str) -> None:
    page = browser.new_page(viewport={"width": 1240, "height": 1000})
    page.goto(server_url)
    until(page, "document.getElementById('run-info').textContent.startsWith('run ')")
    box = page.locator("#pad").bounding_box()
    # A hash sign drawn big: two bars down, two across.
    for line in ([(100, 30), (90, 250)], [(190, 30), (180, 250)], [(30, 100), (250, 100)]):
        stroke(page, line, box)
    with page.expect_response(lambda r: "/api/predict" in r.url) as info:
        stroke(page, [(30, 180), (250, 180)], box)
    body = info.value.json()
    until(page, "!document.getElementById('not-digit').hidden", timeout=20000)
    assert body["not_a_digit"] is True, body.get("digit_score")
    assert page.inner_text("#not-digit") == "not sure this is a digit"
    if os.environ.get("MNIST_CNN_SCREENSHOT_NOT_DIGIT"):
        page.locator("main").screenshot(path=os.environ["MNIST_CNN_SCREENSHOT_NOT_DIGIT"])
    # A digit clears it.
    page.click("#clear")
    assert page.locator("#not-digit").is_hidden()
    stroke(page, [(145, 35), (138, 245)], box)
    shows(page, "1")
    assert page.locator("#not-digit").is_hidden()
    page.close()
