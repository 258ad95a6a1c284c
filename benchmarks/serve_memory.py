"""The server's memory bound, measured: how far hostile requests raise a real server's RSS.

Starts ``mnist-cnn serve RUN --port 0`` in a child process (RUN: a run folder or model file;
without one, a small network made in a temp folder: the memory measured is the decoding's,
which does not depend on the network), warms it up with one drawing, then for each case
sends one request, and then ``--concurrency`` at once, sampling the server's resident set
(``/proc/PID/status`` VmRSS) every 2 ms. Reported per case: the answers' status codes, the
largest error body, the peak RSS growth over the RSS just before the case, and how long a
``GET /api/info`` from another client took while the case's requests were in flight.

    PYTHONPATH=src python benchmarks/serve_memory.py [RUN] [--concurrency 8] [--json]

The targets (docs/reliability.md): one request within the body limit raises RSS by at most
300 MB, ``--concurrency 8`` of them at once by at most 1 GB. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
URL_LINE = re.compile(r"at (http://\S+/)")
MB = 1_000_000
ONE_TARGET_MB = 300
MANY_TARGET_MB = 1_000


@contextmanager
def server(run: str | os.PathLike[str], start_timeout: float = 120.0) -> Iterator[tuple[str, int]]:
    """``mnist-cnn serve RUN --port 0`` in a child process; yields (its URL, its pid)."""
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
        seen: list[str] = []
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
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_bytes(pid: int) -> int:
    """A process's resident set size now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextmanager
def peak_rss_growth(pid: int, interval: float = 0.002) -> Iterator[dict[str, int]]:
    """Sample ``pid``'s RSS while the block runs; fills ``{"growth": peak - start}``."""
    out = {"start": rss_bytes(pid), "peak": 0, "growth": 0}
    out["peak"] = out["start"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out["peak"] = max(out["peak"], rss_bytes(pid))
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak"] = max(out["peak"], rss_bytes(pid))
        out["growth"] = out["peak"] - out["start"]


# --------------------------------------------------------------------------- hostile bodies


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def drawing() -> bytes:
    """A 7 drawn as the page draws: white strokes on a black 280×280 pad."""
    img = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(img).line([(70, 50), (210, 50), (120, 240)], fill=255, width=22)
    return _png(img)


def big_photo_png(width: int = 4_000, height: int = 4_000) -> bytes:
    """A 16 MP RGBA picture of a dark digit on white paper (about 100 KB as PNG)."""
    img = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    w = width // 10
    ImageDraw.Draw(img).line(
        [(width * 0.3, height * 0.2), (width * 0.7, height * 0.2), (width * 0.45, height * 0.8)],
        fill=(20, 20, 20, 255),
        width=w,
    )
    return _png(img)


def strip_png(width: int) -> bytes:
    """A 1-pixel-high PNG ``width`` pixels long (40 M pixels: about 40 KB)."""
    return _png(Image.new("L", (width, 1), 255))


def json_strings(size: int) -> bytes:
    """``{"image": [[ "x", ... ]]}`` of about ``size`` bytes: one row of strings."""
    n = (size - 20) // 4
    return b'{"image": [[' + b",".join([b'"x"'] * n) + b"]]}"


def json_numbers(size: int, side: int = 1_400) -> bytes:
    """A square-ish array of zeros with a bright block, ``preprocess`` on, of about ``size``."""
    per_row = side * 3
    rows = max(1, size // per_row)
    zero_row = "[" + ",".join(["0"] * side) + "]"
    ink_row = (
        "["
        + ",".join(["0"] * (side // 3) + ["200"] * (side // 3) + ["0"] * (side - 2 * (side // 3)))
        + "]"
    )
    body = ",".join(ink_row if rows // 3 < r < 2 * rows // 3 else zero_row for r in range(rows))
    return ('{"preprocess": true, "image": [' + body + "]}").encode()


@dataclass
class Case:
    name: str
    path: str
    make: Callable[[], bytes]
    content_type: str


def cases(limit: int) -> list[Case]:
    """The hostile requests, each within the default body limit of ``limit`` bytes."""
    return [
        Case("drawing, 280×280 PNG", "api/predict", drawing, "image/png"),
        Case("1 × 40 M pixel PNG", "api/predict", lambda: strip_png(40_000_000), "image/png"),
        Case("1 × 16 M pixel PNG", "api/predict", lambda: strip_png(16_000_000), "image/png"),
        Case("4000×4000 RGBA PNG (16 MP)", "api/predict", big_photo_png, "image/png"),
        Case(
            "JSON, strings",
            "api/predict/array",
            lambda: json_strings(limit - 1024),
            "application/json",
        ),
        Case(
            "JSON, numbers, preprocess",
            "api/predict/array",
            lambda: json_numbers(limit - 1024),
            "application/json",
        ),
        Case("PNG sent as JSON", "api/predict/array", drawing, "application/json"),
    ]


@dataclass
class Result:
    case: str
    body_bytes: int
    one_status: int
    one_growth_mb: float
    many: int
    many_statuses: list[int]
    many_growth_mb: float
    largest_error_bytes: int
    info_while_busy_s: float
    seconds: float


def measure(url: str, pid: int, case: Case, concurrency: int) -> Result:
    """One request, then ``concurrency`` at once, with the RSS sampled throughout."""
    body = case.make()
    headers = {"content-type": case.content_type}
    errors: list[int] = []
    t0 = time.perf_counter()
    with httpx.Client(timeout=120) as client:

        def post() -> int:
            res = client.post(url + case.path, content=body, headers=headers)
            if res.status_code >= 400:
                errors.append(len(res.content))
            return res.status_code

        with peak_rss_growth(pid) as one:
            status = post()
        with peak_rss_growth(pid) as many, ThreadPoolExecutor(concurrency + 1) as pool:
            futures = [pool.submit(post) for _ in range(concurrency)]
            time.sleep(0.05)  # the requests are in: does another client still get answers?
            t_info = time.perf_counter()
            client.get(url + "api/info").raise_for_status()
            info_s = time.perf_counter() - t_info
            statuses = [f.result() for f in futures]
    return Result(
        case=case.name,
        body_bytes=len(body),
        one_status=status,
        one_growth_mb=round(one["growth"] / MB, 1),
        many=concurrency,
        many_statuses=sorted(set(statuses)),
        many_growth_mb=round(many["growth"] / MB, 1),
        largest_error_bytes=max(errors, default=0),
        info_while_busy_s=round(info_s, 3),
        seconds=round(time.perf_counter() - t0, 2),
    )


def tiny_run(folder: Path) -> Path:
    """A small network's model file (the decoding's memory does not depend on the network)."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from mnist_cnn.checkpoint import save_model
    from mnist_cnn.model import ModelConfig, build_model

    torch.manual_seed(0)
    path = folder / "model.safetensors"
    save_model(path, build_model(ModelConfig(conv1_channels=4, conv2_channels=8, hidden=16)))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", help="run folder or model file (default: a small one)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from mnist_cnn.serve import MAX_BODY_BYTES

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or tiny_run(Path(tmp))
        with server(run) as (url, pid):
            with httpx.Client(
                timeout=60
            ) as client:  # warm-up: the first request loads torch's kernels
                client.post(url + "api/predict", content=drawing()).raise_for_status()
            results = [measure(url, pid, c, args.concurrency) for c in cases(MAX_BODY_BYTES)]
    where = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    ok = all(
        r.one_growth_mb <= ONE_TARGET_MB
        and r.many_growth_mb <= MANY_TARGET_MB
        and r.one_status < 500
        and max(r.many_statuses) < 500
        and r.largest_error_bytes <= 4096
        for r in results
    )
    if args.json:
        print(
            json.dumps(
                {"machine": where, "results": [asdict(r) for r in results], "ok": ok}, indent=2
            )
        )
    else:
        n = args.concurrency
        print(
            f"server memory, {where}; targets: one request +{ONE_TARGET_MB} MB, "
            f"{n} at once +{MANY_TARGET_MB} MB"
        )
        print(
            f"| case | body | status | RSS +MB (1) | statuses ({n}) | RSS +MB ({n}) "
            "| largest error body | /api/info while busy |"
        )
        print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
        for r in results:
            print(
                f"| {r.case} | {r.body_bytes / 1024:,.0f} KiB | {r.one_status} | "
                f"{r.one_growth_mb:.0f} | "
                f"{', '.join(map(str, r.many_statuses))} | {r.many_growth_mb:.0f} | "
                f"{r.largest_error_bytes} B | {r.info_while_busy_s:.2f} s |"
            )
        print("all within the targets" if ok else "OVER A TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
