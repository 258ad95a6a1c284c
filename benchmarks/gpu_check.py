"""GPU checks in one go: correctness of the fast path, the side-by-side table, the seed recipe's
10,000 steps (fast and plain), memory, and the fast preset over 3 seeds.

    MNIST_CNN_DATA=/path/to/data PYTHONPATH=src python benchmarks/gpu_check.py --out gpu.json

About 3 minutes on an H100/H200 after start-up. ``--smoke`` runs every part with tiny step
counts (on the CPU too), to check the script itself. Results: a JSON file and a printed summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mnist_cnn import bench  # noqa: E402
from mnist_cnn.bench import format_table, plain_loop, run_bench  # noqa: E402
from mnist_cnn.datasets import load_dataset  # noqa: E402
from mnist_cnn.device import device_description, select_device, synchronize  # noqa: E402
from mnist_cnn.evaluate import evaluate  # noqa: E402
from mnist_cnn.model import ModelConfig  # noqa: E402
from mnist_cnn.step import native_bf16  # noqa: E402
from mnist_cnn.train import preset_config, train  # noqa: E402

MIB = 1024 * 1024

# Runs in a fresh process so the allocator's peak holds only what evaluation needs.
EVAL_ONLY = """
import json, sys, torch
sys.path.insert(0, {src!r})
from mnist_cnn.checkpoint import load_model
from mnist_cnn.datasets import load_dataset
from mnist_cnn.evaluate import evaluate
device = torch.device({device!r})
data = load_dataset("mnist", {data_dir!r}, download=False)
model, _ = load_model({run!r}, device)
out = {{}}
for n in {sizes!r}:
    torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
    r = evaluate(model, data.test.images[:n], data.test.labels[:n], batch_size=100, device=device)
    out[n] = {{"accuracy": r.accuracy, **r.memory.to_dict()}}
print(json.dumps(out))
"""


def check_equivalence(device: torch.device, report: dict) -> str:
    """The fast step (a CUDA graph on CUDA) against the plain step: bench's equivalence rows."""
    rows = bench.check_equivalence(device, "auto")
    report["equivalence_rows"] = [dataclasses.asdict(e) for e in rows]
    return "ok" if all(e.ok for e in rows) else "DIFFERENT"


def seed_recipe(device, data, steps: int, seeds: list[int], precision: str, out: Path) -> dict:
    """The seed recipe, fast path, through ``train`` (what the CLI runs)."""
    runs = []
    for seed in seeds:
        config = preset_config(
            "seed",
            steps=steps,
            seed=seed,
            device=device.type,
            precision=precision,
            log_every=steps,
            checkpoint_every=steps,
        )
        result = train(config, out / f"seed-{precision}-{seed}", data=data)
        runs.append(
            {
                "seed": seed,
                "train_seconds": result.seconds,
                "test_accuracy": result.test.accuracy,
                "run": str(result.run_dir),
            }
        )
    return {"precision": precision, "runs": runs}


def plain_full(device, data, steps: int) -> dict:
    """The plain loop for ``steps`` steps, timed like ``train`` (evaluation outside the clock)."""
    torch.manual_seed(0)
    model, it = plain_loop(data.train.images, data.train.labels, ModelConfig(), device)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    synchronize(device)
    seconds = time.perf_counter() - t0
    test = evaluate(model, data.test.images, data.test.labels, batch_size=100, device=device)
    return {"train_seconds": seconds, "test_accuracy": test.accuracy}


def training_memory(device, data_dir: str | None, steps: int) -> dict:
    """Peak reserved while training the seed recipe at batch 50 (resident dataset included)."""
    if device.type != "cuda":
        return {"skipped": "not CUDA"}
    code = f"""
import json, sys, torch
sys.path.insert(0, {str(REPO / "src")!r})
from mnist_cnn.datasets import load_dataset
from mnist_cnn.train import preset_config, train
data = load_dataset("mnist", {data_dir!r}, download=False)
torch.cuda.reset_peak_memory_stats()
config = preset_config("seed", steps={steps}, seed=0, device="cuda", log_every={steps},
                       checkpoint_every={steps})
peaks = {{}}
def at_log(rec):
    # The last record comes after the last step and before the test evaluation, which resets
    # the peak counters to measure its own memory: read training's peak here, not after.
    peaks["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    peaks["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
train(config, {tempfile.mkdtemp()!r} + "/run", data=data, on_log=at_log)
print(json.dumps(peaks))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def eval_memory(device, run: str, data_dir: str | None, sizes: list[int]) -> dict:
    """An evaluation-only process: load a checkpoint, evaluate at batch 100, peak per size."""
    code = EVAL_ONLY.format(
        src=str(REPO / "src"), device=str(device), data_dir=data_dir, run=run, sizes=sizes
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fast_preset(device, data, seeds: list[int], out: Path, steps: int | None) -> list[dict]:
    runs = []
    for seed in seeds:
        config = preset_config("fast", seed=seed, device=device.type, steps=steps)
        result = train(config, out / f"fast-{seed}", data=data)
        runs.append(
            {"seed": seed, "train_seconds": result.seconds, "test_accuracy": result.test.accuracy}
        )
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None, help="default: $MNIST_CNN_DATA")
    parser.add_argument("--out", default="gpu_check.json", help="JSON results file")
    parser.add_argument("--smoke", action="store_true", help="tiny step counts, any device")
    args = parser.parse_args()

    device = select_device(args.device)
    smoke = args.smoke
    steps = 30 if smoke else 10_000
    seeds = [0] if smoke else [0, 1, 2]
    report: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_description(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "smoke": smoke,
        "native_bf16": native_bf16(device),
    }
    if device.type != "cuda" and not smoke:
        print("no CUDA device: run with --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    out = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    data = load_dataset("mnist", args.data_dir, download=False)

    def stage(name: str, fn, *a, **kw):
        t0 = time.perf_counter()
        try:
            report[name] = fn(*a, **kw)
        except Exception as err:  # keep going: one failing part must not hide the others
            report[name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"[{time.perf_counter() - t0:6.1f} s] {name}: {json.dumps(report[name])[:300]}")
        Path(args.out).write_text(json.dumps(report, indent=2))

    stage("equivalence", check_equivalence, device, report)
    bench_rows = []

    def bench() -> list[dict]:
        bench_rows.extend(run_bench(device, steps=20 if smoke else 300, warmup=5))
        return [r.to_dict() for r in bench_rows]

    stage("bench", bench)
    if bench_rows:
        print(format_table(bench_rows))
    stage("seed_fast_fp32", seed_recipe, device, data, steps, seeds[:1], "fp32", out)
    stage("seed_fast_auto", seed_recipe, device, data, steps, seeds, "auto", out)
    stage("seed_plain", plain_full, device, data, steps)
    stage("training_memory", training_memory, device, args.data_dir, 200 if smoke else 1000)
    run = report.get("seed_fast_auto", {}).get("runs", [{}])[0].get("run")
    if run:
        stage("eval_memory", eval_memory, device, run, args.data_dir, [1000, 10_000])
    stage("fast_preset", fast_preset, device, data, seeds, out, 20 if smoke else None)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
