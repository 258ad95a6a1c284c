"""Download MNIST-like ``.gz`` files from a list of mirrors, verifying each before keeping it.

A file is streamed into a temporary file next to its destination, checked against every
digest pinned for it (:class:`Checksums`: the published MD5 and SHA-256 of the ``.gz`` file, the
SHA-256 of its decompressed content; an IDX header when no content digest is known) and only
then renamed into place. Any failure removes the temporary file and moves on to the next
mirror; when all mirrors fail, :class:`~mnist_cnn.errors.DownloadError` says why, on one line.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import os
import socket
import ssl
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mnist_cnn.errors import DownloadError

__all__ = ["Checksums", "download_file", "download_files"]

log = logging.getLogger(__name__)

_USER_AGENT = "mnist-cnn"
_CHUNK = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Checksums:
    """What one downloaded ``.gz`` file must match: every digest given is checked (hex)."""

    sha256: str | None = None  # of the decompressed bytes (survives re-compression)
    gz_sha256: str | None = None  # of the .gz file itself, as published
    gz_md5: str | None = None  # of the .gz file itself, as published (torchvision's pins)

    @classmethod
    def of(cls, value: str | Checksums | None) -> Checksums:
        """A bare string is the decompressed content's SHA-256, as before."""
        given = value if isinstance(value, Checksums) else cls(sha256=value)
        clean = {k: v.strip().lower() if v else None for k, v in vars(given).items()}
        return cls(**clean)


class _LocalError(Exception):
    """Writing on this machine failed: no point trying another mirror."""


class _MirrorFailure(Exception):
    """One mirror failed for one file; ``network`` is true when it looks like being offline."""

    def __init__(self, reason: str, *, network: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.network = network


def download_file(
    filename: str,
    mirrors: Sequence[str],
    dest_dir: Path,
    sha256: str | Checksums | None,
    *,
    timeout: float = 30.0,
) -> Path:
    """Download ``filename`` from the first working mirror into ``dest_dir`` and verify it.

    ``sha256``: the decompressed content's SHA-256, or :class:`Checksums`, or None (IDX check).
    """
    return _download(filename, mirrors, Path(dest_dir), sha256, timeout, [filename])


def download_files(
    files: Mapping[str, str | Checksums | None],
    mirrors: Sequence[str],
    dest_dir: Path,
    *,
    timeout: float = 30.0,
) -> list[Path]:
    """Download each ``name -> checksums`` in ``files`` missing from ``dest_dir``; return paths."""
    dest_dir = Path(dest_dir)
    paths: list[Path] = []
    missing = [name for name in files if _present(dest_dir, name) is None]
    for name, sha256 in files.items():
        existing = _present(dest_dir, name)
        if existing is not None:
            log.info("%s already present, not downloading", existing)
            paths.append(existing)
            continue
        paths.append(_download(name, mirrors, dest_dir, sha256, timeout, missing))
        missing.remove(name)
    return paths


def _present(dest_dir: Path, name: str) -> Path | None:
    """Return the existing copy of ``name`` (as is, or decompressed without ``.gz``), if any."""
    for candidate in (dest_dir / name, dest_dir / name.removesuffix(".gz")):
        if candidate.exists():
            return candidate
    return None


def _download(
    filename: str,
    mirrors: Sequence[str],
    dest_dir: Path,
    sha256: str | Checksums | None,
    timeout: float,
    all_names: Sequence[str],
) -> Path:
    """Try each mirror in turn; raise DownloadError naming every failure if none works."""
    if not filename or Path(filename).name != filename or filename in (".", ".."):
        raise ValueError(f"not a plain file name: {filename!r}")
    expected = Checksums.of(sha256)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(
            f"could not download {filename}: cannot create {dest_dir}: {_oneline(err)}"
        ) from err
    final = dest_dir / filename

    failures: list[tuple[str, _MirrorFailure]] = []
    for mirror in mirrors:
        url = (mirror if mirror.endswith("/") else mirror + "/") + filename
        log.info("downloading %s", url)
        try:
            _fetch_to(url, final, expected, timeout)
        except _MirrorFailure as failure:
            log.info("%s: %s", url, failure.reason)
            failures.append((mirror, failure))
            continue
        log.info("saved %s", final)
        return final

    if failures:
        detail = "; ".join(f"{mirror}: {failure.reason}" for mirror, failure in failures)
    else:
        detail = "no mirrors given"
    if failures and all(failure.network for _, failure in failures):
        hint = (
            f"You seem to be offline: put the files by hand in {dest_dir} "
            f"(names: {', '.join(all_names)})"
        )
    else:
        hint = f"Or put {filename} in {dest_dir} by hand."
    raise DownloadError(f"could not download {filename}: {detail}. {hint}")


def _fetch_to(url: str, final: Path, expected: Checksums, timeout: float) -> None:
    """Stream ``url`` into a temp file beside ``final``, verify it, then move it into place."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    except OSError as err:
        raise _local_error(final, err) from err
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _stream(url, out, timeout)
        _verify(tmp, expected)
        try:
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
            os.replace(tmp, final)
        except OSError as err:
            raise _local_error(final, err) from err
    except _LocalError as err:
        raise _local_error(final, err.__cause__ or err) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _local_error(final: Path, err: BaseException) -> DownloadError:
    """Build the error for a failure to write in the destination folder."""
    return DownloadError(
        f"could not download {final.name}: cannot write to {final.parent}: {_oneline(err)}"
    )


def _stream(url: str, out: BinaryIO, timeout: float) -> None:
    """Copy the body of ``url`` into ``out`` chunk by chunk, checking it arrived whole."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    opener = urllib.request.build_opener()  # re-reads proxy settings from the environment
    try:
        with opener.open(request, timeout=timeout) as response:
            length_header = response.headers.get("Content-Length")
            try:
                expected_len = int(length_header) if length_header is not None else None
            except ValueError:
                expected_len = None
            got = 0
            while chunk := response.read(_CHUNK):
                try:
                    out.write(chunk)
                except OSError as err:
                    raise _LocalError() from err
                got += len(chunk)
            if expected_len is not None and got != expected_len:
                raise _MirrorFailure(f"truncated (got {got} of {expected_len} bytes)")
    except urllib.error.HTTPError as err:
        err.close()  # it holds the open response
        raise _MirrorFailure(f"HTTP {err.code}") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, OSError):
            raise _os_failure(reason) from None
        raise _MirrorFailure(_oneline(reason), network=True) from None
    except http.client.HTTPException as err:
        # RemoteDisconnected is both an HTTPException and a ConnectionResetError.
        if isinstance(err, OSError):
            raise _os_failure(err) from None
        raise _MirrorFailure(f"bad HTTP response ({type(err).__name__})") from None
    except OSError as err:
        raise _os_failure(err) from None


def _os_failure(err: OSError) -> _MirrorFailure:
    """Turn a socket-level error into a short reason, marked as network trouble where it is."""
    if isinstance(err, ssl.SSLError):
        return _MirrorFailure(f"TLS error ({_oneline(err)})")
    if isinstance(err, TimeoutError):
        return _MirrorFailure("timed out", network=True)
    if isinstance(err, ConnectionRefusedError):
        return _MirrorFailure("connection refused", network=True)
    if isinstance(err, socket.gaierror):
        return _MirrorFailure("host not found", network=True)
    if isinstance(err, (ConnectionResetError, ConnectionAbortedError)):
        return _MirrorFailure("connection reset", network=True)
    return _MirrorFailure(_oneline(err), network=True)


def _verify(path: Path, expected: Checksums) -> None:
    """Check the .gz file's digests, then gunzip it chunk by chunk and check its content."""
    with open(path, "rb") as f:
        if f.read(2) != _GZIP_MAGIC:
            raise _MirrorFailure("not a gzip file")
    if expected.gz_sha256 or expected.gz_md5:
        gz_sha256, gz_md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                gz_sha256.update(chunk)
                gz_md5.update(chunk)
        _compare(gz_sha256.hexdigest(), expected.gz_sha256, " as the .gz's SHA-256")
        _compare(gz_md5.hexdigest(), expected.gz_md5, " as the .gz's MD5")
    digest = hashlib.sha256()
    head = b""
    try:
        with gzip.open(path, "rb") as g:
            while chunk := g.read(_CHUNK):
                if len(head) < 4:
                    head += chunk[: 4 - len(head)]
                digest.update(chunk)
    except EOFError:
        raise _MirrorFailure("truncated (compressed data ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise _MirrorFailure(f"corrupt gzip data ({_oneline(err)})") from None

    if expected.sha256 is not None:
        _compare(digest.hexdigest(), expected.sha256)
    elif not (len(head) == 4 and head[:3] == b"\x00\x00\x08" and 1 <= head[3] <= 3):
        raise _MirrorFailure(f"not an IDX file (header {head.hex() or 'empty'})")


def _compare(got: str, expected: str | None, what: str = "") -> None:
    if expected is not None and got != expected:
        raise _MirrorFailure(f"checksum mismatch (got {got[:8]}…, expected {expected[:8]}…{what})")


def _oneline(value: object) -> str:
    """Return ``str(value)`` squeezed onto one line."""
    return " ".join(str(value).split()) or type(value).__name__
