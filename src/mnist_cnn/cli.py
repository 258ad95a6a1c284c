"""The ``mnist-cnn`` command: parse, call a library function, print.

Errors that a user can fix (bad file, bad setting, missing data) print one line on stderr and
exit with status 1; usage errors exit with 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import MnistCnnError

if TYPE_CHECKING:  # the command line starts without torch; a command imports what it runs
    from .train import TrainConfig

PROG = "mnist-cnn"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must lie in 0-65535, got {value}")
    return value


def _shift(text: str) -> int:
    from .train import MAX_SHIFT

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole pixels, got {text!r}") from None
    if not 0 <= value <= MAX_SHIFT:
        raise argparse.ArgumentTypeError(f"must lie in 0-{MAX_SHIFT}, got {value}")
    return value


def _label_smoothing(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _add_data_args(p: argparse.ArgumentParser, dataset_default: str | None = "mnist") -> None:
    from .datasets import DATASETS

    p.add_argument(
        "--dataset",
        choices=list(DATASETS),
        default=dataset_default,
        help=f"dataset (default: {dataset_default or 'the one the run was trained on'})",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data root holding one folder per dataset (default: $MNIST_CNN_DATA, else "
        "~/.cache/mnist-cnn)",
    )


# --------------------------------------------------------------------------- download


def _setup_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download", help="download a dataset (checked against its published digests)"
    )
    _add_data_args(p)
    p.set_defaults(func=_cmd_download)


def _cmd_download(args: argparse.Namespace) -> int:
    from .datasets import FILES, download_dataset, find_file

    folder = download_dataset(args.dataset, args.data_dir)
    for raw in FILES.values():
        print(find_file(folder, raw))
    return 0


# --------------------------------------------------------------------------- train


def _setup_train(sub: argparse._SubParsersAction) -> None:
    from .device import DEVICES
    from .distributed import DEFAULT_TIMEOUT_S
    from .train import MAX_SHIFT, PRESETS, SCHEDULES

    p = sub.add_parser(
        "train",
        help="train a network (default: the seed's recipe) and print its test accuracy",
        description="Train a network. Defaults are the seed's recipe: Adam 1e-4, batch 50, "
        "10,000 steps, dropout 0.5.",
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="seed",
        action=_StoreGiven,  # --resume refuses it even when it names the default
        help="recipe to start from (default: seed)",
    )
    _add_data_args(p)
    p.set_defaults(dataset=None)  # the preset's (mnist); None tells --resume it was not given
    p.add_argument("--steps", type=_positive_int, help="optimisation steps (seed: 10000)")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="images per step (seed: 50); under torchrun the global batch, split evenly "
        "among the processes",
    )
    p.add_argument("--lr", type=float, help="Adam learning rate (seed: 1e-4)")
    p.add_argument("--dropout", type=float, help="drop probability in training (seed: 0.5)")
    p.add_argument(
        "--schedule",
        choices=list(SCHEDULES),
        help="learning rate over the run: constant (seed), or onecycle (fast: warm-up from "
        "lr/10 over the first 20%%, cosine down to lr/1000; --lr is the peak)",
    )
    p.add_argument(
        "--shift",
        type=_shift,
        metavar="PIXELS",
        help=f"move each training image by up to this many pixels, 0-{MAX_SHIFT} "
        "(seed: 0, fast: 1)",
    )
    p.add_argument(
        "--label-smoothing",
        type=_label_smoothing,
        metavar="S",
        help="give each class S/10 of the target and the true class 1-S more, 0 <= S < 1 "
        "(seed: 0, fast: 0.1)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="random seed; makes a CPU run repeatable bit for bit "
        "(default: random, recorded in config.json)",
    )
    p.add_argument(
        "--device",
        choices=list(DEVICES),
        default=None,
        help="where to train (default: auto = cuda, then mps, then cpu)",
    )
    p.add_argument("--log-every", type=_positive_int, help="steps between log lines (default 1000)")
    p.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        help="steps between checkpoints (default 1000; also at the end)",
    )
    p.add_argument(
        "--eval-batch-size",
        type=_positive_int,
        help="batch size for validation and test evaluation (default 100)",
    )
    p.add_argument(
        "--full-train",
        action="store_true",
        default=None,
        help="train on all 60,000 images (validation is then not held out)",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="also write TensorBoard logs to RUN/tensorboard: scalars and conv1 feature maps "
        "(needs the tensorboard extra: pip install -e '.[tensorboard]')",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="auto (default): bf16 autocast where the device computes bf16 natively, else fp32",
    )
    p.add_argument(
        "--plain-step",
        dest="fast",
        action="store_false",
        default=None,
        help="use the plain eager step instead of the fast path (same recipe, slower)",
    )
    p.add_argument("--out", metavar="RUN", help="run folder (default: runs/<timestamp>)")
    p.add_argument(
        "--no-curves",
        dest="curves",
        action="store_false",
        help="leave out RUN/curves.png (a quarter of a second of drawing at the end, and "
        "matplotlib's start-up); 'mnist-cnn plot RUN' draws it later",
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted run from its last checkpoint, with its own settings; "
        "--steps N extends it (a finished run too), --data-dir finds its data moved elsewhere",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun: how long a process waits for a silent peer before the run stops "
        f"(default {DEFAULT_TIMEOUT_S:g})",
    )
    p.set_defaults(func=_cmd_train)


def _format_log(rec: dict[str, Any]) -> str:
    line = f"step {rec['step']}, training accuracy {rec['train_accuracy']:g}"
    if "plan" in rec:  # the first record: say how the step is computed
        line = f"plan: {rec['plan']}\n{line}"
    line += f", validation accuracy {rec['val_accuracy']:.4f}"
    if rec.get("loss") is not None:
        line += f", loss {rec['loss']:.4f}"
    return line + f" ({rec['seconds']:.1f} s)"


def _cmd_train(args: argparse.Namespace) -> int:
    from .distributed import Parallel, launched_world_size, process_group

    # Settings that cannot work are refused by each process before it waits for the others;
    # the run folder is checked once they have joined.
    if args.resume:
        _refuse_flags_with_resume(args)
        config = None
    else:
        config = _train_config(args)
        Parallel(world_size=launched_world_size()).check_batch(config.batch_size)
    # Under torchrun every process runs this command; only rank 0 prints.
    with process_group(args.dist_timeout) as par:
        return _train(args, config, main_process=par.is_main)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from .train import preset_config

    return preset_config(
        args.preset,
        dataset=args.dataset,
        data_dir=args.data_dir,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        dropout=args.dropout,
        seed=args.seed,
        device=args.device,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        eval_batch_size=args.eval_batch_size,
        full_train=args.full_train,
        tensorboard=args.tensorboard,
        precision=args.precision,
        fast=args.fast,
        schedule=args.schedule,
        shift=args.shift,
        label_smoothing=args.label_smoothing,
    )


def _train(args: argparse.Namespace, config: TrainConfig | None, main_process: bool) -> int:
    from tqdm import tqdm

    from .train import resume, train

    progress = main_process and sys.stderr.isatty()

    def on_log(rec: dict[str, Any]) -> None:
        tqdm.write(_format_log(rec), file=sys.stdout)
        sys.stdout.flush()

    if config is None:
        result = resume(
            args.resume,
            steps=args.steps,
            data_dir=args.data_dir,
            on_log=on_log,
            progress=progress,
            curves=args.curves,
        )
    else:
        result = train(config, args.out, on_log=on_log, progress=progress, curves=args.curves)
    if not main_process:
        return 0
    print(f"test accuracy {result.test.accuracy:.4f} ({result.test.correct}/{result.test.total})")
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; run saved in {result.run_dir}")
    return 0


# Flags --resume accepts: the run's own settings hold, except its length and its data's place
# (and whether it ends by drawing its curves).
_RESUME_FLAGS = {
    "resume",
    "steps",
    "data_dir",
    "dist_timeout",
    "curves",
    "func",
    "command",
    "verbose",
}


class _StoreGiven(argparse._StoreAction):
    """Store the value, and note that the flag was given (its default may look the same)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, values, option_string)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def _refuse_flags_with_resume(args: argparse.Namespace) -> None:
    from .errors import ConfigError

    given = getattr(args, "given", set())
    for dest, value in vars(args).items():
        if dest == "preset" and dest not in given or dest == "given":
            continue
        if dest not in _RESUME_FLAGS and value is not None:
            flag = "--plain-step" if dest == "fast" else "--" + dest.replace("_", "-")
            raise ConfigError(
                f"{flag} cannot be used with --resume: a run continues with its own settings "
                "(only --steps, to extend it, --data-dir, for moved data, and --no-curves may be "
                "given)"
            )


# --------------------------------------------------------------------------- evaluate


def _setup_evaluate(sub: argparse._SubParsersAction) -> None:
    from .datasets import DATASETS

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and peak memory of a run")
    p.add_argument("run", metavar="RUN", help="run folder (or its model.safetensors)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=100,
        help="images per batch (default 100, as the seed's second run)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    _add_data_args(p, dataset_default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--ood",
        metavar="DATASET",
        choices=list(DATASETS),
        help="instead: how well the not-a-digit score tells the test digits from DATASET's test "
        "images (e.g. fashion-mnist): AUROC and the share flagged",
    )
    p.add_argument(
        "--ood-data-dir",
        metavar="DIR",
        help="data root holding DATASET (default: --data-dir); Debian's dataset-fashion-mnist "
        "package: /usr/share/datasets",
    )
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    if args.ood:
        return _evaluate_ood(args)

    result, info = evaluate_run(
        args.run,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        dataset=args.dataset,
        data_dir=args.data_dir,
    )
    if args.json:
        _print_json({"run": str(args.run), "split": args.split, **info, **result.to_dict()})
        return 0
    for note in result.notes:
        print(f"note: {note}")
    print(
        f"{info['dataset']} {args.split}: accuracy {result.accuracy:.4f} "
        f"({result.correct}/{result.total}) at batch size {result.batch_size}"
    )
    classes = info["classes"]
    for label, acc in enumerate(result.per_class_accuracy):
        shown = "n/a" if acc is None else f"{acc:.4f}"
        print(f"  class {classes[label]:>11}: {shown}  ({sum(result.confusion[label])} images)")
    if result.memory is not None:
        print(result.memory.summary())
    print(f"{result.seconds:.2f} s on {info['device']}")
    return 0


def _evaluate_ood(args: argparse.Namespace) -> int:
    from .digitness import evaluate_ood

    device = "cpu" if args.device == "auto" else args.device
    r = evaluate_ood(
        args.run, args.ood, data_dir=args.data_dir, ood_data_dir=args.ood_data_dir, device=device
    )
    if args.json:
        _print_json({"run": str(args.run), **r.to_dict()})
        return 0
    print(f"not-a-digit score against {r.dataset} ({r.images} test images):")
    print(f"  AUROC {r.auroc:.4f}")
    print(f"  {r.dataset} flagged as not a digit: {100 * r.flagged:.1f}%")
    print(f"  test digits flagged: {100 * r.digits_flagged:.2f}% (threshold {r.threshold:.4f})")
    return 0


# --------------------------------------------------------------------------- export


def _setup_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a run's network to ONNX (-o), or as a static draw-a-digit page (--web)",
        description="Write the network as ONNX: input 'images' float32 (batch, 1, 28, 28) in "
        "[0, 1], output 'logits' (batch, 10). Needs the onnx extra: pip install -e '.[onnx]'. "
        "Or, with --web DIR, the draw-a-digit page as a folder that runs the network in the "
        "browser: open DIR/index.html from disk or put DIR on any static host.",
    )
    p.add_argument("run", metavar="RUN", help="run folder (or its model.safetensors)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--out", metavar="FILE", help="the .onnx file to write")
    target.add_argument("--web", metavar="DIR", help="the folder to write the static page into")
    p.add_argument(
        "--opset", type=_positive_int, help="ONNX opset version (default: the exporter's)"
    )
    p.add_argument(
        "--weights",
        choices=("auto", "fp32", "fp16"),
        default="auto",
        help="--web: how the page stores the weights (default auto: fp32 if the folder stays "
        "under 10 MB, else fp16)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="--web: data root holding the run's dataset, for the page's test digits "
        "(default: $MNIST_CNN_DATA, else ~/.cache/mnist-cnn)",
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import CHECK_TOLERANCE, export_onnx

    if args.web is not None:
        from .export_web import export_web

        done = export_web(args.run, args.web, weights=args.weights, data_dir=args.data_dir)
        digits = f", {done.test_digits} test digits" if done.test_digits else ", no test digits"
        print(
            f"wrote {done.path}: {done.bytes / 1e6:.1f} MB ({done.parameters:,} parameters as "
            f"{done.dtype}{digits}); open {done.path / 'index.html'} in a browser"
        )
        return 0

    path = export_onnx(args.run, args.out, opset=args.opset)
    print(f"wrote {path}: onnxruntime matches PyTorch within {CHECK_TOLERANCE:g}")
    return 0


# --------------------------------------------------------------------------- serve


def _setup_serve(sub: argparse._SubParsersAction) -> None:
    from .limits import DEFAULT_HOST, DEFAULT_PORT, MAX_BODY_BYTES

    p = sub.add_parser(
        "serve",
        help="a web page to draw digits and watch the run's prediction and feature maps",
        description="Serve a page where you draw a digit and see the network's prediction, "
        "the input as it sees it and its conv1/conv2 feature maps, plus a JSON API "
        "(documented at /docs).",
    )
    p.add_argument("run", metavar="RUN", help="run folder (or its model.safetensors)")
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
        "0.0.0.0 lets other machines connect)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    p.add_argument(
        "--device", default="cpu", help="cpu, cuda, mps or auto (default cpu: one digit at a time)"
    )
    p.add_argument(
        "--max-body-kib",
        type=_positive_int,
        default=MAX_BODY_BYTES // 1024,
        help=f"largest request body accepted, in KiB (default {MAX_BODY_BYTES // 1024}); "
        "larger ones get 413",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data root holding the run's dataset, for the random-test-digit button "
        "(default: $MNIST_CNN_DATA, else ~/.cache/mnist-cnn)",
    )
    p.add_argument(
        "--allow-host",
        metavar="NAME",
        action="append",
        default=[],
        help="also answer requests for this Host name (e.g. behind a proxy); by default only "
        "loopback names and --host are answered, so other web pages cannot reach the server",
    )
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import is_loopback, serve

    def on_ready(url: str) -> None:
        if is_loopback(args.host):
            print(f"serving {args.run} at {url} (this machine only; --host 0.0.0.0 to share)")
        else:
            print(f"serving {args.run} at {url}")
            print(
                f"{PROG}: warning: listening on {args.host}, not 127.0.0.1: anyone who can "
                "reach this machine can use the page and the API",
                file=sys.stderr,
            )
        print("press Ctrl-C to stop", flush=True)

    serve(
        args.run,
        args.host,
        args.port,
        data_dir=args.data_dir,
        device=args.device,
        max_body_bytes=args.max_body_kib * 1024,
        on_ready=on_ready,
        allow_hosts=args.allow_host,
        on_calibrate=_say,
    )
    return 0


# --------------------------------------------------------------------------- bench


def _setup_bench(sub: argparse._SubParsersAction) -> None:
    from .device import DEVICES

    p = sub.add_parser(
        "bench",
        help="check and time the fast path against the plain training loop on this machine",
        description="Check that the fast step computes the plain step's function on this "
        "device (exit 1 if not), then train the seed's network with the plain loop (DataLoader, "
        "eager) and with the fast path, alternating, on random images; print images/s, ratio, "
        "peak memory, and the step's GFLOP/s as a fraction of this machine's matrix-multiply "
        "rate.",
    )
    p.add_argument("--steps", type=_positive_int, default=300, help="timed steps each (300)")
    p.add_argument("--batch-size", type=_positive_int, default=50, help="images per step (50)")
    p.add_argument("--device", choices=list(DEVICES), default="auto", help="default auto")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="the fast path's precision (auto: bf16 where the device computes it natively)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from datetime import date

    from .bench import bench, format_report
    from .device import select_device

    device = select_device(args.device)
    report = bench(device, steps=args.steps, batch_size=args.batch_size, precision=args.precision)
    where = f"{report.plan.summary()}; {date.today().isoformat()}"
    if args.json:
        _print_json({"device": where, **report.to_dict()})
    else:
        print(f"seed network, batch {args.batch_size}, {where}")
        print(format_report(report))
    if not report.ok:
        print("mnist-cnn: error: the fast path disagrees with the plain step", file=sys.stderr)
        return 1
    return 0
    return 0


# --------------------------------------------------------------------------- look inside


def _load_for_inspection(run: str, device: str = "cpu"):  # -> (model, classes, dataset name)
    from .checkpoint import load_model
    from .device import select_device
    from .rundir import run_classes

    model, meta = load_model(run, select_device(device))
    name, classes = run_classes(run, meta)
    return model, classes, name


def _setup_features(sub: argparse._SubParsersAction) -> None:
    from .inspect import MAP_LAYERS, SCALES

    p = sub.add_parser(
        "features",
        help="picture a layer's feature maps for some digits (the input beside its maps)",
        description="The input digit in grayscale beside one layer's feature maps (conv1 as "
        "4x8, conv2 as 8x8; conv3, in a fast-preset network, as 8x8), one row per digit. "
        "Without --index or --image: the first 6 and the first 9 of the split, the seed's "
        "comparison.",
    )
    p.add_argument("run", metavar="RUN", help="run folder (or its model.safetensors)")
    p.add_argument(
        "--index", type=int, nargs="+", action="extend", metavar="N", help="dataset image(s)"
    )
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument(
        "--image", nargs="+", action="extend", metavar="FILE", help="your own picture(s)"
    )
    p.add_argument("--layer", choices=list(MAP_LAYERS), default="conv1")
    p.add_argument(
        "--scale",
        choices=list(SCALES),
        default="map",
        help="map: each map to its own maximum (default; shows every pattern); shared: one "
        "scale for the whole picture (compares strengths)",
    )
    p.add_argument("-o", "--out", metavar="OUT.png", help="output (default: features-LAYER.png)")
    p.add_argument("--data-dir", metavar="DIR", help="data root (default: $MNIST_CNN_DATA)")
    p.set_defaults(func=_cmd_features)


def _cmd_features(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import inspect as insp
    from .datasets import load_dataset
    from .plotting import save_figure
    from .preprocess import ImageError, load_image, preprocess_image

    model, classes, name = _load_for_inspection(args.run)
    digits = []
    if args.index or not args.image:
        split = load_dataset(name, args.data_dir).split(args.split)
        indices = args.index or insp.first_of_each(split, [6, 9])
        digits += insp.split_digits(split, indices)
    for path in args.image or []:
        try:
            image = preprocess_image(load_image(path))
        except ImageError as err:  # name the file, once
            text = str(err)
            raise ImageError(text if text.startswith(path) else f"{path}: {text}") from None
        digits.append(insp.Digit(image, Path(path).name))
    fm = insp.feature_maps(model, digits, args.layer)
    out = save_figure(
        insp.plot_feature_maps(fm, scale=args.scale, classes=classes),
        args.out or f"features-{args.layer}.png",
    )
    for d, probs in zip(fm.digits, fm.probabilities, strict=True):
        print(insp.describe(d, probs, classes))
    print(f"wrote {out}")
    return 0


def _setup_filters(sub: argparse._SubParsersAction) -> None:
    from .inspect import FILTER_LAYERS

    p = sub.add_parser(
        "filters",
        help="picture a convolution's learned kernels",
        description="conv1: its 32 5x5 kernels as a 4x8 grid. conv2 (and conv3, in a "
        "fast-preset network): all its kernels, a row per output channel, a column per input "
        "channel. Gray is 0, white positive, black negative, one scale per picture.",
    )
    p.add_argument("run", metavar="RUN", help="run folder (or its model.safetensors)")
    p.add_argument("--layer", choices=list(FILTER_LAYERS), default="conv1")
    p.add_argument("-o", "--out", metavar="OUT.png", help="output (default: filters-LAYER.png)")
    p.set_defaults(func=_cmd_filters)


def _cmd_filters(args: argparse.Namespace) -> int:
    from . import inspect as insp
    from .plotting import save_figure

    model, _, _ = _load_for_inspection(args.run)
    weights = insp.filters(model, args.layer)
    out = save_figure(
        insp.plot_filters(weights, args.layer), args.out or f"filters-{args.layer}.png"
    )
    print(f"wrote {out}")
    return 0


def _setup_card(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "card",
        help="a model card for a run (RUN/README.md, as model hubs show it)",
        description="Write the run's model card: Hugging Face-style YAML front matter (license, "
        "datasets, tags, test accuracy), the network, the command that reproduces it, where "
        "it trained, per-class accuracy, limitations and how to load it. Training writes it "
        "too, when it ends.",
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("-o", "--out", metavar="FILE", help="output (default: RUN/README.md)")
    p.set_defaults(func=_cmd_card)


def _cmd_card(args: argparse.Namespace) -> int:
    from .card import write_card

    print(f"wrote {write_card(args.run, args.out)}")
    return 0


def _setup_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="training curves of a run (finished or still training)",
        description="Loss and training/validation accuracy against step, from metrics.jsonl.",
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("-o", "--out", metavar="OUT.png", help="output (default: RUN/curves.png)")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from .inspect import save_training_curves

    print(f"wrote {save_training_curves(args.run, args.out)}")
    return 0


def _setup_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML report of a run (opens with no server or network)",
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("-o", "--out", metavar="report.html", help="output (default: RUN/report.html)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--data-dir", metavar="DIR", help="data root (default: $MNIST_CNN_DATA)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(f"wrote {write_report(args.run, args.out, data_dir=args.data_dir, device=args.device)}")
    return 0


def _setup_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify your own pictures of digits (photos, scans, drawings)",
        description="Each picture is preprocessed as MNIST was: grayscale, a light background "
        "inverted, cropped to the ink, fitted into 20x20 keeping its aspect ratio, centred by "
        "centre of mass in 28x28. A folder stands for the image files in it.",
    )
    p.add_argument("run", metavar="RUN", help="run folder (or its model.safetensors)")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--top", type=_positive_int, default=3, help="probabilities shown (default 3)")
    p.add_argument(
        "--invert",
        choices=["auto", "yes", "no"],
        default="auto",
        help="auto: invert when the background is light (default); yes/no: force it",
    )
    p.add_argument(
        "--save-preprocessed",
        metavar="DIR",
        help="also write the 28x28 picture the network saw for each file into DIR",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data root, to calibrate the not-a-digit check on first use "
        "(default: $MNIST_CNN_DATA, else ~/.cache/mnist-cnn)",
    )
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .digitness import optional_scorer
    from .predict import Failure, predict_files, save_preprocessed

    model, classes, name = _load_for_inspection(args.run, args.device)
    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    scorer = optional_scorer(
        args.run, model, data_dir=args.data_dir, dataset=name, on_calibrate=_say
    )
    results = predict_files(model, args.images, classes=classes, invert=invert, scorer=scorer)
    if not results:
        raise MnistCnnError("no image files found in the given folder(s)")
    for r in results:
        if isinstance(r, Failure):
            print(f"{PROG}: error: {r.message}", file=sys.stderr)
    if args.json:
        _print_json(
            [r.to_dict() if isinstance(r, Failure) else r.to_dict(args.top) for r in results]
        )
    else:
        for r in results:
            if not isinstance(r, Failure):
                top = ", ".join(f"{c} {p:.3f}" for c, p in r.top(args.top))
                doubt = "  (not sure this is a digit)" if r.not_a_digit else ""
                print(f"{r.source}: {r.label}  ({top}){doubt}")
    if args.save_preprocessed:
        written = save_preprocessed(results, args.save_preprocessed)
        if not args.json:
            print(f"wrote {len(written)} preprocessed picture(s) to {args.save_preprocessed}")
    return 1 if any(isinstance(r, Failure) for r in results) else 0


def _setup_explain(sub: argparse._SubParsersAction) -> None:
    from .explain import METHODS

    p = sub.add_parser(
        "explain",
        help="what made the network say that: attribution maps for some digits",
        description="Per image: the input, and for each method the attribution of the predicted "
        "class (or --target) beside its overlay on the input. Red: evidence for the class, "
        "blue: against. Methods: gradient x input, integrated gradients (from blank paper), "
        "occlusion (a 5x5 patch slid over the image).",
    )
    p.add_argument("run", metavar="RUN", help="run folder (or its model.safetensors)")
    p.add_argument("images", metavar="IMAGE", nargs="*", help="your own picture(s)")
    p.add_argument(
        "--index", type=int, nargs="+", action="extend", metavar="N", help="dataset image(s)"
    )
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--target", type=int, metavar="K", help="explain class K instead")
    p.add_argument(
        "--method",
        choices=list(METHODS),
        nargs="+",
        action="extend",
        help="methods to show (default: all three)",
    )
    p.add_argument("-o", "--out", metavar="OUT.png", default="explain.png", help="explain.png")
    p.add_argument("--data-dir", metavar="DIR", help="data root (default: $MNIST_CNN_DATA)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from . import inspect as insp
    from .datasets import load_dataset
    from .explain import METHODS, explain_figure
    from .plotting import save_figure
    from .preprocess import ImageError, load_image, preprocess_image

    if not args.index and not args.images:
        raise MnistCnnError("nothing to explain: give IMAGE file(s) or --index N")
    model, classes, name = _load_for_inspection(args.run, args.device)
    digits = []
    if args.index:
        digits += insp.split_digits(load_dataset(name, args.data_dir).split(args.split), args.index)
    for path in args.images:
        try:
            image = preprocess_image(load_image(path))
        except ImageError as err:
            text = str(err)
            raise ImageError(text if text.startswith(path) else f"{path}: {text}") from None
        digits.append(insp.Digit(image, Path(path).name))
    fig, exps = explain_figure(
        model,
        np.stack([d.image for d in digits]),
        [d.name for d in digits],
        methods=args.method or METHODS,
        target=args.target,
        classes=classes,
        labels=[d.label for d in digits],
    )
    out = save_figure(fig, args.out)
    for i, d in enumerate(digits):
        print(f"{insp.describe(d, exps[0].probabilities[i], classes)}; explained: "
              f"{classes[int(exps[0].targets[i])]}")  # fmt: skip
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _setup_train,
    _setup_evaluate,
    _setup_download,
    _setup_export,
    _setup_serve,
    _setup_bench,
    _setup_features,
    _setup_filters,
    _setup_plot,
    _setup_report,
    _setup_card,
    _setup_predict,
    _setup_explain,
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every subcommand)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train, evaluate and look inside the classic 'Deep MNIST' CNN.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for setup in COMMANDS:
        setup(sub)
    return parser


def _say(message: str) -> None:
    """A note on stderr (stdout stays the command's results, e.g. its JSON)."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=f"{PROG}: %(levelname)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except MnistCnnError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 130 if type(err).__name__ == "TrainingInterrupted" else 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # disk full, permission denied, ...: say what and where, no traceback
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"{PROG}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
