"""The server's memory bound on a real uvicorn server on 127.0.0.1: hostile requests within the
body limit raise its resident memory by at most 300 MB each, 8 at once by at most 1 GB, and
their error bodies stay under 4 KB (figures: benchmarks/serve_memory.py, docs/reliability.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .hostile_util import store_digit_check, tiny_model_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from serve_memory import (  # noqa: E402
    MANY_TARGET_MB,
    ONE_TARGET_MB,
    Case,
    big_photo_png,
    drawing,
    json_strings,
    measure,
    server,
    strip_png,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    import httpx

    path = store_digit_check(tiny_model_file(tmp_path_factory.mktemp("mem") / "model.safetensors"))
    with server(path) as (url, pid):
        httpx.post(url + "api/predict", content=drawing(), timeout=60).raise_for_status()
        yield url, pid


@pytest.mark.parametrize(
    "case, status, concurrency",
    [
        # 40 M pixels: refused from the PNG header (it decoded to 5 GB before the budget).
        (Case("40 MP strip", "api/predict", lambda: strip_png(40_000_000), "image/png"), 400, 2),
        # 16 MP: within the budget, decoded (2 at a time), shrunk before float work, classified.
        (Case("16 MP photo", "api/predict", big_photo_png, "image/png"), 200, 8),
        # 8 MB of strings: refused without one validation error per element.
        (
            Case("strings", "api/predict/array", lambda: json_strings(8 << 20), "application/json"),
            422,
            2,
        ),
        (Case("PNG as JSON", "api/predict/array", drawing, "application/json"), 422, 1),
    ],
    ids=lambda v: v.name if isinstance(v, Case) else str(v),
)
def test_hostile_requests_stay_within_the_memory_bound(live, case, status, concurrency):
    url, pid = live
    r = measure(url, pid, case, concurrency)
    assert r.one_status == status and r.many_statuses == [status], r
    assert r.one_growth_mb <= ONE_TARGET_MB, r
    assert r.many_growth_mb <= (MANY_TARGET_MB if concurrency == 8 else ONE_TARGET_MB), r
    assert r.largest_error_bytes <= 4096, r
    assert r.info_while_busy_s < 30, r  # the event loop still answers other clients
