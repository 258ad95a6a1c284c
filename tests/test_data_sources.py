"""Where each dataset is downloaded from and what pins it (the sources: docs/data-sources.md)."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

from mnist_cnn import datasets
from mnist_cnn.download import Checksums


@pytest.mark.parametrize("name", list(datasets.DATASETS))
def test_every_mirror_is_https_and_serves_https(name: str) -> None:
    for mirror in datasets.DATASETS[name].mirrors:
        assert mirror.startswith("https://") and mirror.endswith("/"), mirror
        # An S3 *website* endpoint answers plain HTTP only: over HTTPS it always fails.
        assert "s3-website" not in mirror, mirror


@pytest.mark.parametrize("name", list(datasets.DATASETS))
def test_every_file_has_its_published_gz_digests(name: str) -> None:
    info = datasets.DATASETS[name]
    for raw in datasets.FILES.values():
        sums = info.checksums(raw)
        assert re.fullmatch(r"[0-9a-f]{32}", sums.gz_md5 or ""), (name, raw)
        assert re.fullmatch(r"[0-9a-f]{64}", sums.gz_sha256 or ""), (name, raw)
        assert sums.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", sums.sha256), (name, raw)
    # All twelve files differ: no digest was pasted twice.
    every = [
        d for i in datasets.DATASETS.values() for d in (*i.gz_md5.values(), *i.gz_sha256.values())
    ]
    assert len(set(every)) == len(every) == len(datasets.DATASETS) * 8


def test_the_mnist_content_digests_match_the_real_files(data_root: Path) -> None:
    """The shared copy is re-compressed, so only the content digest can be checked here."""
    info = datasets.DATASETS["mnist"]
    for raw in datasets.FILES.values():
        digest = hashlib.sha256()
        with gzip.open(data_root / "mnist" / f"{raw}.gz", "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        assert digest.hexdigest() == info.sha256[raw], raw


def test_download_dataset_asks_for_every_digest(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    seen = {}

    def fake(files, mirrors, folder):
        seen.update(files=dict(files), mirrors=mirrors)
        return []

    monkeypatch.setattr("mnist_cnn.download.download_files", fake)
    monkeypatch.delenv("MNIST_CNN_MIRRORS", raising=False)
    datasets.download_dataset("kmnist", tmp_path)
    info = datasets.DATASETS["kmnist"]
    assert seen["mirrors"] == info.mirrors
    assert seen["files"] == {
        f"{raw}.gz": Checksums(None, info.gz_sha256[raw], info.gz_md5[raw])
        for raw in datasets.FILES.values()
    }
