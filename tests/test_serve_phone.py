"""The draw-a-digit page on a phone: 390×844 CSS pixels, touch only, real headless Chromium.

The digit is drawn with touch events (CDP ``Input.dispatchTouchEvent``, which the browser turns
into pointer events of type "touch", as a finger would); the prediction must be readable right
under the pad without scrolling, before and after drawing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.browser_util import CHROMIUM, CHROMIUM_ARGS
from tests.test_serve_live import shows, until

PHONE = {"width": 390, "height": 844}

# Where an element is, in viewport pixels, and how far the page has scrolled.
RECT = """(id) => { const r = document.getElementById(id).getBoundingClientRect();
  return {top: r.top, bottom: r.bottom, left: r.left, right: r.right,
          scrollX: window.scrollX, scrollY: window.scrollY,
          pageWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
          innerHeight: window.innerHeight}; }"""


def touch_stroke(cdp, points: list[tuple[float, float]], box: dict) -> None:
    """Drag one finger through POINTS (pad pixels, 0–280) over the drawing pad."""
    sx, sy = box["width"] / 280, box["height"] / 280

    def at(x: float, y: float) -> list[dict]:
        return [{"x": box["x"] + x * sx, "y": box["y"] + y * sy, "id": 1}]

    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": at(*points[0])})
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        for i in range(1, 13):
            x, y = x0 + (x1 - x0) * i / 12, y0 + (y1 - y0) * i / 12
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": at(x, y)})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def in_view(page, element_id: str) -> dict:
    r = page.evaluate(f"({RECT})('{element_id}')")
    assert r["scrollX"] == 0 and r["scrollY"] == 0, (element_id, r)  # nothing scrolled
    assert r["pageWidth"] <= r["innerWidth"], r  # no sideways scrolling either
    assert r["left"] >= 0 and r["right"] <= r["innerWidth"], (element_id, r)
    assert r["top"] >= 0 and r["bottom"] <= r["innerHeight"], (element_id, r)
    return r


@pytest.mark.slow
def test_draw_by_touch_on_a_phone_and_read_the_answer_without_scrolling(
    browser, server_url: str
) -> None:
    assert CHROMIUM and CHROMIUM_ARGS  # the same browser and flags as the desktop test
    context = browser.new_context(
        viewport=PHONE, device_scale_factor=3, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(server_url)
    until(page, "document.getElementById('run-info').textContent.startsWith('run ')")
    page.evaluate(
        """() => { window.pointerTypes = [];
          document.getElementById('pad').addEventListener('pointerdown',
            (e) => window.pointerTypes.push(e.pointerType)); }"""
    )

    pad = in_view(page, "pad")
    prediction = in_view(page, "prediction")
    assert prediction["top"] >= pad["bottom"]  # one column: the answer right under the pad
    assert prediction["top"] - pad["bottom"] < 200, (pad, prediction)  # ... not far below it

    cdp = context.new_cdp_session(page)
    box = page.locator("#pad").bounding_box()
    touch_stroke(cdp, [(70, 60), (215, 60), (120, 245)], box)  # a 7, as in the desktop test
    shows(page, "7")
    assert page.evaluate("() => window.pointerTypes") == ["touch"]
    assert "% sure" in page.inner_text("#confidence")
    in_view(page, "pad")  # drawing with a finger did not scroll the page
    in_view(page, "prediction")
    in_view(page, "confidence")

    # Below the answer the text must not point "to the right" of anything.
    words = re.findall(r"[a-z]+", page.inner_text("#howto-panel").lower())
    assert "right" not in words and "left" not in words
    assert not problems, problems
    if os.environ.get("MNIST_CNN_SCREENSHOT_PHONE"):
        page.screenshot(path=os.environ["MNIST_CNN_SCREENSHOT_PHONE"])
    context.close()


def test_the_phone_layout_is_in_the_stylesheet() -> None:
    """Cheap guard for the fast tier: the narrow layout stacks the answer under the pad."""
    css = (Path(__file__).parent.parent / "src/mnist_cnn/static/style.css").read_text()
    narrow = css[css.index("@media (max-width: 680px)") :]
    assert 'grid-template-areas: "draw" "result" "howto" "maps"' in narrow
