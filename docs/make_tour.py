"""Run docs/tour.ipynb top to bottom and keep its outputs (the pictures the docs show).

    PYTHONPATH=src python docs/make_tour.py [--steps 1000] [--eval-images N] [--out FILE]

The notebook runs in a kernel of this interpreter (a kernelspec made in a temporary folder, so
nothing is installed), in a temporary working folder (its run folder is thrown away after), with
MNIST from ``$MNIST_CNN_DATA`` as everywhere else. ``make tour`` calls this with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TOUR = Path(__file__).resolve().parent / "tour.ipynb"
KERNEL = "mnist-cnn-tour"
DEFAULT_STEPS = 1000


def _kernelspec(root: Path) -> None:
    """A kernelspec named KERNEL under ``root/kernels`` that starts this very interpreter."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "mnist-cnn tour", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))


def execute(
    notebook: Path = TOUR,
    *,
    steps: int = DEFAULT_STEPS,
    eval_images: int = 0,
    timeout: float = 1800,
) -> nbformat.NotebookNode:
    """Execute ``notebook`` with ``steps`` training steps; returns it with its outputs.

    ``eval_images`` > 0 evaluates on only that many validation and test images (for quick
    checks). A failing cell raises ``nbclient.exceptions.CellExecutionError``.
    """
    nb = nbformat.read(notebook, as_version=4)
    with tempfile.TemporaryDirectory(prefix="tour-") as tmp:
        jupyter = Path(tmp) / "jupyter"
        _kernelspec(jupyter)
        work = Path(tmp) / "work"
        work.mkdir()
        env = dict(os.environ)
        env["MNIST_CNN_TOUR_STEPS"] = str(steps)
        env["MNIST_CNN_TOUR_EVAL_IMAGES"] = str(eval_images)
        # The kernel finds src/ first when run from a checkout, as the tests do.
        src = str(Path(__file__).resolve().parent.parent / "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        # Where jupyter_client looks for kernelspecs; read when the client is made, below.
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = str(jupyter)
        try:
            client = NotebookClient(
                nb,
                kernel_name=KERNEL,
                timeout=timeout,
                record_timing=False,
                resources={"metadata": {"path": str(work)}},
            )
            client.execute(env=env)
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps")
    p.add_argument(
        "--eval-images", type=int, default=0, help="held-out images to evaluate on (0: all)"
    )
    p.add_argument("--out", type=Path, default=TOUR, help="where to write the executed notebook")
    args = p.parse_args()
    t0 = time.perf_counter()
    nb = execute(TOUR, steps=args.steps, eval_images=args.eval_images)
    tmp = args.out.with_name(args.out.name + ".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, args.out)
    size = args.out.stat().st_size
    print(f"{args.out}: executed in {time.perf_counter() - t0:.0f} s, {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
