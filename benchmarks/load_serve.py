"""Load test for `mnist-cnn serve` on loopback: many concurrent clients, bounded requests.

Starts ``mnist-cnn serve RUN --port 0`` in a child process (or targets ``--url``), then posts
PNG drawings to ``/api/predict?activations=true`` (what the page sends) in three phases, side by
side in one run:

1. one client at a time (the latency floor),
2. ``--concurrency`` clients with feature maps (the page's request),
3. ``--concurrency`` clients without feature maps (the prediction alone).

Each phase reports errors, requests/s and p50/p99 latency; any error or non-200 answer makes
the exit status 1. The whole run is bounded by ``--time-limit`` seconds.

    .venv/bin/python benchmarks/load_serve.py RUN --requests 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
URL_LINE = re.compile(r"at (http://\S+/)")


def drawings() -> list[bytes]:
    """PNGs like the page sends: white strokes on a black 280×280 pad (a 1, a 7, a 0, a 4)."""
    strokes = [
        [[(140, 40), (140, 240)]],
        [[(70, 50), (210, 50), (120, 240)]],
        [[(140, 40), (80, 90), (80, 190), (140, 240), (200, 190), (200, 90), (140, 40)]],
        [[(90, 40), (80, 150), (210, 150)], [(170, 60), (170, 245)]],
    ]
    out = []
    for lines in strokes:
        img = Image.new("L", (280, 280), 0)
        draw = ImageDraw.Draw(img)
        for line in lines:
            draw.line(line, fill=255, width=22, joint="curve")
        buf = BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@contextmanager
def server_process(run: str, start_timeout: float = 120.0) -> Iterator[str]:
    """``mnist-cnn serve RUN --port 0`` in a child process; yields the URL it prints."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_cnn", "serve", str(run), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + start_timeout
        seen = []
        url = None
        while url is None:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError("the server did not start:\n" + "".join(seen))
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
            if ready:
                line = proc.stdout.readline()
                seen.append(line)
                match = URL_LINE.search(line)
                url = match.group(1) if match else None
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def load(
    url: str,
    requests: int,
    concurrency: int,
    activations: bool,
    deadline: float,
    expected: dict[int, int],
) -> dict:
    """Send ``requests`` predictions from ``concurrency`` clients; latency figures in ms.

    ``expected`` maps each drawing to its prediction: filled by the first answer for it, then
    checked, so an answer mixed up between concurrent requests counts as an error.
    """
    bodies = drawings()
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    total_bytes = 0
    endpoint = f"{url}api/predict?activations={'true' if activations else 'false'}"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent, total_bytes
        while sent < requests and time.monotonic() < deadline:
            i = sent
            sent += 1
            t0 = time.perf_counter()
            try:
                res = await c.post(
                    endpoint,
                    content=bodies[i % len(bodies)],
                    headers={"content-type": "image/png"},
                )
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            latencies.append((time.perf_counter() - t0) * 1000)
            total_bytes += len(res.content)
            if res.status_code != 200:
                errors.append(f"HTTP {res.status_code}: {res.text[:200]}")
            else:
                got = res.json()["prediction"]
                want = expected.setdefault(i % len(bodies), got)
                if got != want:
                    errors.append(f"request {i}: predicted {got}, earlier {want}")

    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as c:
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    latencies.sort()
    done = len(latencies)
    return {
        "concurrency": concurrency,
        "activations": activations,
        "requests": done,
        "errors": len(errors),
        "first_errors": errors[:5],
        "unfinished": requests - sent,
        "seconds": round(seconds, 3),
        "requests_per_s": round(done / seconds, 1) if seconds else None,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "response_kib": round(total_bytes / max(done, 1) / 1024, 1),
    }


def machine() -> str:
    cores = os.cpu_count()
    return f"{platform.machine()}, {cores} logical CPUs, Python {platform.python_version()}"


def run_phases(url: str, requests: int, concurrency: int, time_limit: float) -> list[dict]:
    """The three phases, in one process, against one server."""
    deadline = time.monotonic() + time_limit
    sequential = max(4, min(requests // 10, 200))
    expected: dict[int, int] = {}
    return [
        asyncio.run(load(url, sequential, 1, True, deadline, expected)),
        asyncio.run(load(url, requests, concurrency, True, deadline, expected)),
        asyncio.run(load(url, requests, concurrency, False, deadline, expected)),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", help="run folder to serve (or give --url)")
    p.add_argument("--url", help="an already running server, e.g. http://127.0.0.1:8000/")
    p.add_argument("--requests", type=int, default=2000, help="per concurrent phase (2000)")
    p.add_argument("--concurrency", type=int, default=32, help="clients at once (32)")
    p.add_argument("--time-limit", type=float, default=300, help="seconds for all phases (300)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if (args.run is None) == (args.url is None):
        p.error("give a RUN folder or --url, not both")
    if args.url:
        phases = run_phases(args.url, args.requests, args.concurrency, args.time_limit)
    else:
        with server_process(args.run) as url:
            phases = run_phases(url, args.requests, args.concurrency, args.time_limit)
    failed = any(ph["errors"] or ph["unfinished"] for ph in phases)
    if args.json:
        print(json.dumps({"machine": machine(), "phases": phases, "ok": not failed}, indent=2))
    else:
        print(f"machine: {machine()}")
        for ph in phases:
            maps = "with maps" if ph["activations"] else "no maps"
            print(
                f"{ph['concurrency']:>3} clients, {maps:9}: {ph['requests']} requests, "
                f"{ph['errors']} errors, {ph['requests_per_s']} req/s, "
                f"p50 {ph['p50_ms']} ms, p99 {ph['p99_ms']} ms, max {ph['max_ms']} ms, "
                f"{ph['response_kib']} KiB per answer"
            )
        for ph in phases:
            for err in ph["first_errors"]:
                print(f"error: {err}")
            if ph["unfinished"]:
                print(f"error: {ph['unfinished']} requests not sent within --time-limit")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
