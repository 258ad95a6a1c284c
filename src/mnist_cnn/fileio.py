"""Atomic file writes: a temp file in the target folder, then a rename, so no reader ever sees a
half-written checkpoint, picture or download."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import StorageError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it onto ``path``, else delete it.

    The parent folder is created if missing. The temp name keeps the suffix, so libraries that
    pick a format from the file name (matplotlib, Pillow) still do the right thing.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
    except OSError as err:
        raise storage_error(path, err) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise storage_error(path, err) from None
        raise


def storage_error(path: str | os.PathLike[str], err: BaseException) -> StorageError:
    """One line for a failed write: 'no space left on device writing PATH', or what else."""
    text = str(err)
    if getattr(err, "errno", None) == errno.ENOSPC or "StorageFull" in text or "code: 28" in text:
        return StorageError(f"no space left on device writing {path}")
    reason = getattr(err, "strerror", None) or (text[:120] + ("..." if len(text) > 120 else ""))
    return StorageError(f"cannot write {path}: {reason}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
