"""Tests for mnist_cnn.download against a real HTTP server on 127.0.0.1 (no network)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mnist_cnn.download import Checksums, download_file, download_files
from mnist_cnn.errors import DownloadError

IMAGES = "train-images-idx3-ubyte.gz"
LABELS = "train-labels-idx1-ubyte.gz"


def _idx3(n: int = 3) -> bytes:
    header = struct.pack(">IIII", 0x00000803, n, 28, 28)
    return header + bytes((i * 7 + j) % 256 for i in range(n) for j in range(28 * 28))


def _idx1(n: int = 3) -> bytes:
    return struct.pack(">II", 0x00000801, n) + bytes(range(n))


RAW = {IMAGES: _idx3(), LABELS: _idx1()}
GZ = {name: gzip.compress(raw, mtime=0) for name, raw in RAW.items()}
SHA = {name: hashlib.sha256(raw).hexdigest() for name, raw in RAW.items()}


@dataclass
class Server:
    """A running local server; ``url(folder)`` is a mirror base URL."""

    port: int
    requests: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)

    def url(self, folder: str) -> str:
        return f"http://127.0.0.1:{self.port}/{folder}/"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder, plus /short/NAME (lying Content-Length) and /slow/NAME (stalls)."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        self.server.agents.append(self.headers["User-Agent"])  # type: ignore[attr-defined]
        if self.path.startswith("/short/"):
            body = GZ[self.path.removeprefix("/short/")]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 100))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        if self.path.startswith("/slow/"):
            time.sleep(0.5)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    for folder in ("good", "bad", "half", "notgz", "notidx"):
        (root / folder).mkdir(parents=True)
    for name, gz in GZ.items():
        (root / "good" / name).write_bytes(gz)
        # Valid gzip, valid IDX, wrong content: only the checksum catches it.
        (root / "bad" / name).write_bytes(gzip.compress(RAW[name][:-1] + b"\xff", mtime=0))
        (root / "half" / name).write_bytes(gz[: len(gz) // 2])
        (root / "notgz" / name).write_bytes(b"<html>not found</html>")
        (root / "notidx" / name).write_bytes(gzip.compress(b"hello world", mtime=0))

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root))
    )
    httpd.daemon_threads = True
    srv = Server(port=httpd.server_address[1])
    httpd.requests = srv.requests  # type: ignore[attr-defined]
    httpd.agents = srv.agents  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "data" / "mnist"  # does not exist yet: download creates it


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _fails(
    name: str, mirrors: list[str], dest: Path, sha: str | Checksums | None = "use-real"
) -> str:
    sha = SHA[name] if sha == "use-real" else sha
    with pytest.raises(DownloadError) as info:
        download_file(name, mirrors, dest, sha, timeout=2.0)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"could not download {name}: ")
    assert not dest.exists() or list(dest.iterdir()) == []
    return msg


def test_good_file_lands_verified(server: Server, dest: Path) -> None:
    path = download_file(IMAGES, [server.url("good")], dest, SHA[IMAGES])
    assert path == dest / IMAGES
    assert path.read_bytes() == GZ[IMAGES]
    assert sorted(p.name for p in dest.iterdir()) == [IMAGES]
    assert server.agents == ["mnist-cnn"]


def test_no_checksum_accepts_idx(server: Server, dest: Path) -> None:
    path = download_file(LABELS, [server.url("good")], dest, None)
    assert path.read_bytes() == GZ[LABELS]
    assert sorted(p.name for p in dest.iterdir()) == [LABELS]


def test_uppercase_checksum_accepted(server: Server, dest: Path) -> None:
    assert download_file(LABELS, [server.url("good")], dest, SHA[LABELS].upper()).exists()


def test_no_checksum_rejects_non_idx(server: Server, dest: Path) -> None:
    msg = _fails(LABELS, [server.url("notidx")], dest, None)
    assert "not an IDX file" in msg


def test_corrupt_file_checksum_mismatch(server: Server, dest: Path) -> None:
    mirror = server.url("bad")
    msg = _fails(IMAGES, [mirror], dest)
    assert f"{mirror}: checksum mismatch (got " in msg
    assert f"expected {SHA[IMAGES][:8]}…" in msg
    assert msg.endswith(f"Or put {IMAGES} in {dest} by hand.")


def test_content_length_truncation(server: Server, dest: Path) -> None:
    n = len(GZ[IMAGES])
    msg = _fails(IMAGES, [server.url("short")], dest)
    assert f"truncated (got {n} of {n + 100} bytes)" in msg


def test_gzip_cut_in_half(server: Server, dest: Path) -> None:
    msg = _fails(IMAGES, [server.url("half")], dest)
    assert "truncated" in msg


def test_not_gzip(server: Server, dest: Path) -> None:
    msg = _fails(IMAGES, [server.url("notgz")], dest)
    assert "not a gzip file" in msg


def test_missing_file_404(server: Server, dest: Path) -> None:
    mirror = server.url("nowhere")
    msg = _fails(IMAGES, [mirror], dest)
    assert f"{mirror}: HTTP 404" in msg
    assert "offline" not in msg


def test_falls_back_to_second_mirror(server: Server, dest: Path) -> None:
    mirrors = [server.url("bad"), server.url("nowhere"), _refused_url(), server.url("good")]
    path = download_file(IMAGES, mirrors, dest, SHA[IMAGES], timeout=2.0)
    assert path.read_bytes() == GZ[IMAGES]
    assert sorted(p.name for p in dest.iterdir()) == [IMAGES]
    assert [r.split("/")[1] for r in server.requests] == ["bad", "nowhere", "good"]


def test_all_failures_listed_in_order(server: Server, dest: Path) -> None:
    msg = _fails(IMAGES, [server.url("bad"), server.url("nowhere")], dest)
    assert msg.index(server.url("bad")) < msg.index(server.url("nowhere"))
    assert "checksum mismatch" in msg and "HTTP 404" in msg
    assert "offline" not in msg


def test_refused_connection_says_offline(dest: Path) -> None:
    mirror = _refused_url()
    msg = _fails(IMAGES, [mirror], dest)
    assert f"{mirror}: connection refused" in msg
    assert "You seem to be offline" in msg
    assert str(dest) in msg and IMAGES in msg


def test_timeout_counts_as_offline(server: Server, dest: Path) -> None:
    with pytest.raises(DownloadError) as info:
        download_file(IMAGES, [server.url("slow")], dest, SHA[IMAGES], timeout=0.1)
    assert "timed out" in str(info.value)
    assert "You seem to be offline" in str(info.value)
    assert list(dest.iterdir()) == []


def test_download_files_skips_present(server: Server, dest: Path) -> None:
    dest.mkdir(parents=True)
    (dest / LABELS.removesuffix(".gz")).write_bytes(RAW[LABELS])  # present, decompressed
    paths = download_files(SHA, [server.url("good")], dest)
    assert paths == [dest / IMAGES, dest / LABELS.removesuffix(".gz")]
    assert server.requests == [f"/good/{IMAGES}"]
    assert (dest / IMAGES).read_bytes() == GZ[IMAGES]

    server.requests.clear()
    assert download_files(SHA, [server.url("good")], dest) == paths
    assert server.requests == []


def test_download_files_offline_names_all_missing(dest: Path) -> None:
    with pytest.raises(DownloadError) as info:
        download_files(SHA, [_refused_url()], dest, timeout=2.0)
    msg = str(info.value)
    assert "You seem to be offline" in msg
    assert f"(names: {IMAGES}, {LABELS})" in msg


def test_no_mirrors(dest: Path) -> None:
    msg = _fails(IMAGES, [], dest)
    assert "no mirrors given" in msg


def test_rejects_path_in_filename(dest: Path) -> None:
    with pytest.raises(ValueError):
        download_file("../evil.gz", ["http://127.0.0.1:9/"], dest, None)


def test_published_gz_digests_are_checked_too(server: Server, dest: Path, tmp_path: Path) -> None:
    gz = GZ[IMAGES]
    md5, gz_sha = hashlib.md5(gz).hexdigest(), hashlib.sha256(gz).hexdigest()
    everything = Checksums(sha256=SHA[IMAGES], gz_sha256=gz_sha, gz_md5=md5.upper())
    assert download_file(IMAGES, [server.url("good")], dest, everything).read_bytes() == gz
    (dest / IMAGES).unlink()
    wrong_md5 = Checksums(sha256=SHA[IMAGES], gz_sha256=gz_sha, gz_md5="0" * 32)
    assert "checksum mismatch" in _fails(IMAGES, [server.url("good")], dest, wrong_md5)
    assert "as the .gz's MD5" in _fails(IMAGES, [server.url("good")], dest, wrong_md5)
    wrong_sha = Checksums(sha256=SHA[IMAGES], gz_sha256="f" * 64, gz_md5=md5)
    assert "as the .gz's SHA-256" in _fails(IMAGES, [server.url("good")], dest, wrong_sha)


def test_recompressed_file_passes_the_content_digest_only(
    server: Server, dest: Path, tmp_path: Path
) -> None:
    """Same IDX bytes in a different gzip wrapper: the content matches, the .gz digests do not."""
    again = gzip.compress(RAW[IMAGES], compresslevel=1, mtime=12345)
    assert again != GZ[IMAGES]
    (tmp_path / "www" / "again").mkdir()
    (tmp_path / "www" / "again" / IMAGES).write_bytes(again)
    gz_sha = hashlib.sha256(GZ[IMAGES]).hexdigest()
    pinned = Checksums(sha256=SHA[IMAGES], gz_sha256=gz_sha)
    assert "as the .gz's SHA-256" in _fails(IMAGES, [server.url("again")], dest, pinned)
    content_only = Checksums(sha256=SHA[IMAGES])
    assert download_file(IMAGES, [server.url("again")], dest, content_only).read_bytes() == again


@pytest.mark.parametrize(
    ("error", "reason", "network"),
    [
        (TimeoutError(), "timed out", True),
        (ConnectionRefusedError(), "connection refused", True),
        (socket.gaierror(-2, "Name or service not known"), "host not found", True),
        (ConnectionResetError(), "connection reset", True),
        (ssl.SSLError(1, "wrong version number"), "TLS error", False),
        (OSError(5, "Input/output\nerror"), "Input/output error", True),
    ],
)
def test_socket_errors_become_short_reasons(error: OSError, reason: str, network: bool) -> None:
    """Each socket-level failure is named in a few words (on one line), and marked as network
    trouble where retrying another mirror or later may help."""
    from mnist_cnn import download

    failure = download._os_failure(error)
    assert reason in str(failure) and "\n" not in str(failure)
    assert failure.network is network
