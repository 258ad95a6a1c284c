import json
import subprocess
import sys

import pytest

from mnist_cnn.cli import main


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_cnn", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow  # a process of its own: starting one costs seconds
def test_train_then_evaluate_end_to_end(tmp_path, tiny_root, capsys):
    """`python -m mnist_cnn train` as a real process (its stdout, an empty stderr without a
    terminal), then `evaluate` on the run it wrote, in this process.

    The fast preset's network, on the generated data root (its log lines evaluate 83
    validation images).
    """
    import os

    env = {**os.environ, "MNIST_CNN_DATA": str(tiny_root)}
    run = tmp_path / "run"
    proc = run_cli(
        "train",
        "--preset",
        "fast",
        "--steps",
        "20",
        "--log-every",
        "10",
        "--eval-batch-size",
        "1000",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--out",
        str(run),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("plan: fast path, ") and " threads" in lines[0]  # how it ran
    assert lines[1].startswith("step 0, training accuracy ")
    assert any(line.startswith("step 10, training accuracy ") for line in lines)
    assert lines[-2].startswith("test accuracy 0.") and lines[-2].endswith("/101)")
    assert lines[-1].startswith("trained 20 steps in ") and lines[-1].endswith(str(run))
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    files = ("model.safetensors", "checkpoint.safetensors", "config.json", "metrics.jsonl")
    for name in (*files, "curves.png"):  # the curves too, unless --no-curves
        assert (run / name).is_file(), name
    test_acc = lines[-2].split()[2]

    data = ["--data-dir", str(tiny_root)]
    assert main(["evaluate", str(run), "--json", *data]) == 0
    report = json.loads(capsys.readouterr().out)
    # The same network on the same images: the number training printed.
    assert f"{report['accuracy']:.4f}" == test_acc
    assert report["total"] == 101 and report["dataset"] == "mnist"
    saved = json.loads((run / "results.json").read_text())["test"]
    assert report["confusion"] == saved["confusion"]

    assert main(["evaluate", str(run), "--split", "train", "--batch-size", "7", *data]) == 0
    out = capsys.readouterr().out
    assert "mnist train: accuracy" in out and "/917) at batch size 7" in out
    assert out.count("  class ") == 10
    assert "peak resident memory growth" in out


def test_errors_are_one_line_without_traceback(tmp_path, capsys, monkeypatch):
    assert main(["evaluate", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run folder" in err

    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    assert main(["evaluate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged or not a safetensors file" in err

    # No data and no reachable mirror (a closed port on loopback): say where to put the files.
    monkeypatch.setenv("MNIST_CNN_MIRRORS", "http://127.0.0.1:9/")
    args = ["train", "--data-dir", str(tmp_path / "empty"), "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "offline" in err
    assert str(tmp_path / "empty" / "mnist") in err
    assert not list((tmp_path / "empty" / "mnist").iterdir())


def test_bad_settings_are_refused(tmp_path, capsys):
    # A usage error: argparse's message and status 2, before anything runs.
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--steps", "0"])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    # A setting out of range: one line naming it, status 1, no run folder.
    out = tmp_path / "run"
    assert main(["train", "--dropout", "1.5", "--steps", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dropout" in err and "[0, 1)" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--steps", "ten"], "expected a whole number, got 'ten'"),
        (["serve", "RUN", "--port", "70000"], "must lie in 0-65535, got 70000"),
        (["serve", "RUN", "--port", "http"], "expected a port number, got 'http'"),
    ],
)
def test_ill_typed_flags_name_the_value(args, words, capsys):
    """Usage errors: status 2 and argparse's message naming the flag's bad value."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert (
        exit_.value.code == 2 and words in err and err.splitlines()[-1].startswith("usage") is False
    )
