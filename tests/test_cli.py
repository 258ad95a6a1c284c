import json
import subprocess
import sys

from mnist_cnn.cli import main


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_cnn", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_train_then_evaluate_end_to_end(tmp_path, data_root, monkeypatch):
    import os

    env = {**os.environ, "MNIST_CNN_DATA": str(data_root)}
    run = tmp_path / "run"
    proc = run_cli(
        "train",
        "--steps",
        "30",
        "--log-every",
        "10",
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
    assert lines[-2].startswith("test accuracy 0.")
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    for name in ("model.safetensors", "checkpoint.safetensors", "config.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    test_acc = lines[-2].split()[2]

    proc = run_cli("evaluate", str(run), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert f"{report['accuracy']:.4f}" == test_acc
    assert report["total"] == 10_000 and len(report["per_class_accuracy"]) == 10
    assert report["memory"]["peak_rss_growth_bytes"] >= 0

    proc = run_cli("evaluate", str(run), "--split", "val", "--batch-size", "7", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "mnist val: accuracy" in proc.stdout and "/5000)" in proc.stdout
    assert "peak resident memory growth" in proc.stdout


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


def test_bad_settings_are_refused():
    proc = run_cli("train", "--steps", "0")
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr
    proc = run_cli("train", "--dropout", "1.5", "--steps", "1")
    assert proc.returncode == 1 and "dropout must lie in [0, 1)" in proc.stderr
