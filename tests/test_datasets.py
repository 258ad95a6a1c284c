import gzip

import numpy as np
import pytest
import torch

from mnist_cnn import datasets
from mnist_cnn.datasets import (
    as_flat,
    as_keras,
    dataset_dir,
    load_dataset,
    one_hot,
    parse_idx,
    read_idx,
    validation_size,
)
from mnist_cnn.errors import DataError

from .idx_util import idx_bytes, write_dataset


def test_parse_idx_round_trip():
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = parse_idx(idx_bytes(arr))
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\0\0", "unexpected bytes"),
        (lambda b: b"\x01" + b[1:], "bad magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX data type"),
        (lambda b: b[:3], "too short"),
        (lambda b: b[:6], "truncated IDX header"),
    ],
)
def test_parse_idx_rejects_bad_bytes(mutate, message):
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DataError, match=message):
        parse_idx(mutate(good), "x.idx")


def test_read_idx_gz_and_raw(tmp_path):
    arr = np.full((2, 28, 28), 7, np.uint8)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), read_idx(tmp_path / "a.gz"))


def test_read_idx_names_the_file_when_gzip_is_damaged(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: truncated gzip"):
        read_idx(cut)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(data[:10] + bytes(b ^ 0xFF for b in data[10:]))
    with pytest.raises(DataError, match=r"bad\.gz: corrupt gzip"):
        read_idx(bad)
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope.gz")


def test_small_dataset_splits(tmp_path):
    """A training file smaller than MNIST's keeps MNIST's share of validation images (a twelfth)
    rather than 5,000 of them: 6,000 images still train on 5,500, not on 1,000."""
    assert validation_size(60_000) == 5_000 and validation_size(600_000) == 5_000  # the seed's
    assert validation_size(6_000) == 500 and validation_size(12) == 1
    write_dataset(tmp_path / "mnist", n_train=130, n_test=30)
    data = load_dataset("mnist", tmp_path, download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (120, 10, 30)
    full = load_dataset("mnist", tmp_path, full_train=True, download=False)
    assert len(full.train) == 130
    # The validation split is the first twelfth of the training file, in both modes.
    torch.testing.assert_close(full.train.images[:10], data.val.images)
    torch.testing.assert_close(full.train.images[10:], data.train.images)


def test_too_few_training_images_is_one_clear_error(tmp_path):
    write_dataset(tmp_path / "mnist", n_train=11, n_test=5)
    with pytest.raises(DataError, match="only 11 training images; need at least 12"):
        load_dataset("mnist", tmp_path, download=False)


def test_wrong_file_for_labels_is_refused(tmp_path):
    folder = write_dataset(tmp_path / "mnist")
    images = (folder / "t10k-images-idx3-ubyte.gz").read_bytes()
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(images)
    with pytest.raises(DataError, match="expected a 1-D uint8 labels file"):
        load_dataset("mnist", tmp_path, download=False)


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "fashion-mnist") in message and "mnist-cnn download" in message
    assert "\n" not in message


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_CNN_DATA", str(tmp_path / "env"))
    assert dataset_dir("kmnist") == tmp_path / "env" / "kmnist"
    assert dataset_dir("kmnist", tmp_path / "flag") == tmp_path / "flag" / "kmnist"
    monkeypatch.delenv("MNIST_CNN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert dataset_dir("mnist") == tmp_path / "cache" / "mnist-cnn" / "mnist"
    with pytest.raises(DataError, match="unknown dataset"):
        dataset_dir("cifar10")


def test_one_hot():
    out = one_hot(torch.tensor([0, 3, 9]))
    assert out.shape == (3, 10) and out.dtype == torch.float32
    assert out.argmax(1).tolist() == [0, 3, 9] and out.sum().item() == 3
    with pytest.raises(DataError):
        one_hot(torch.tensor([10]))


def test_real_mnist_splits_and_both_shapes(mnist):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55_000, 5_000, 10_000)
    x, y = as_flat(mnist.test)
    assert x.shape == (10_000, 784) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.shape == (10_000, 10) and (y.sum(1) == 1).all()
    images, labels = as_keras(mnist.test)
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(np.unique(labels)) == set(range(10))
    np.testing.assert_array_equal(y.argmax(1), labels)


def test_known_checksums_match_the_shared_copy(data_root):
    # The registry's checksums are what the downloader verifies; they must fit the real files.
    import hashlib

    for raw, sha in datasets.DATASETS["mnist"].sha256.items():
        content = gzip.decompress((data_root / "mnist" / f"{raw}.gz").read_bytes())
        assert hashlib.sha256(content).hexdigest() == sha


def test_cli_reports_a_corrupt_file_on_one_line(tmp_path, capsys):
    from mnist_cnn.cli import main

    folder = write_dataset(tmp_path / "mnist")
    data = (folder / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 3])
    args = ["train", "--steps", "1", "--data-dir", str(tmp_path), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert "train-images-idx3-ubyte.gz" in err and "truncated" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()
