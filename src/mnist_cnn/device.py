"""Choosing the device (one function, with an explicit override) and measuring peak memory."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
# The variables that hold torch's CPU libraries below what the processor offers
# (benchmarks/as_avx2.sh sets all three with ATEN_CPU_CAPABILITY).
LIBRARY_ISA_VARIABLES = (("oneDNN", "ONEDNN_MAX_CPU_ISA"), ("MKL", "MKL_ENABLE_INSTRUCTIONS"))


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; a named device must exist.

    On CUDA, PyTorch's caching allocator takes memory as tensors need it (nothing is reserved
    up front), which is what the seed asked of TensorFlow with ``allow_growth``.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, colon, index = name.partition(":")
    if kind not in DEVICES or kind == "auto" and colon:
        raise ConfigError(f"unknown device {name[:40]!r}: choose one of {', '.join(DEVICES)}")
    if colon and not (index.isascii() and index.isdigit() and len(index) <= 3):
        raise ConfigError(f"device {name[:40]!r}: the part after ':' must be a device number")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps asked for, but MPS is not available; use --device cpu")
    if kind == "cuda" and colon and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(name)


def device_description(device: torch.device) -> str:
    """A human-readable name for the hardware behind ``device``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"CPU ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
    return device.type


# The instruction-set features that decide how fast training runs on a CPU.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_model() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which of ``CPU_FLAGS`` it has (Linux; elsewhere the platform's)."""
    import platform

    name, flags = platform.processor() or platform.machine(), ()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            name = value.strip()
        elif key.strip() == "flags":
            have = set(value.split())
            flags = tuple(f for f in CPU_FLAGS if f in have)
            break
    return name, flags


def cpu_kernels() -> str:
    """The vector instructions torch's CPU kernels use, and each library held below them.

    torch's own kernels can be held below what the CPU offers (ATEN_CPU_CAPABILITY), and so
    can the libraries it calls: oneDNN (convolutions, bf16 products) and MKL (fp32 products),
    each by its own variable, read when the library starts: "AVX2, oneDNN held at AVX2, MKL
    held at AVX2" under benchmarks/as_avx2.sh.
    """
    held = [
        f"{lib} held at {os.environ[var]}"
        for lib, var in LIBRARY_ISA_VARIABLES
        if os.environ.get(var)
    ]
    return ", ".join([torch.backends.cpu.get_cpu_capability(), *held])


def hardware_description(device: torch.device) -> str:
    """The hardware a step runs on: the GPU's name, or the CPU's model and its vector flags."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    if device.type == "cpu":
        name, flags = cpu_model()
        return f"{name} ({' '.join(flags) or 'no AVX2'}; torch kernels {cpu_kernels()})"
    return device.type


# --------------------------------------------------------------------------- the C allocator

# glibc's mallopt parameters: blocks up to MMAP_THRESHOLD come from the heap (larger ones are
# mapped and unmapped one by one); the heap's free top is handed back to the OS beyond
# TRIM_THRESHOLD. 32 MiB is glibc's largest mmap threshold on 64-bit systems.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


@functools.cache
def _glibc() -> Any:
    """The process's C library if it is glibc (whose mallopt settings are numbered as below),
    else None (macOS, Windows, musl, ...)."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # Windows: no process-wide handle
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def can_keep_freed_memory() -> bool:
    """Whether ``keep_freed_memory`` can work here (a process on glibc)."""
    return _glibc() is not None


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed blocks of up to 32 MiB for reuse, rather than map
    fresh pages for each and hand them back to the OS. True if it took the settings.

    A CPU training step allocates and frees the same activation and gradient buffers every
    step. With glibc's adaptive defaults the fast preset's step (batch 128) often hands them
    back and faults 3,000-4,300 fresh zeroed pages in per step (whether it does depends on the
    order of earlier frees): a quarter of the step (21.0 -> 15.8 ms in bf16, 32.4 -> 25.3 ms
    in fp32 with AVX2 kernels; benchmarks/page_faults.py).
    Process-wide. What is kept was in use once, so the peak grows only by what reuse
    fragments (whole training commands: 10-16 MB); an idle process hands less of it back.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def release_freed_memory() -> None:
    """Hand the heap's freed memory back to the OS now (glibc's ``malloc_trim``), whatever
    ``keep_freed_memory`` set: a measurement of resident growth then starts from a clean heap."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a clock read afterwards means something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------- peak memory


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class PeakMemory:
    """Peak memory taken inside a ``measure_peak_memory`` block, in bytes.

    CUDA: the caching allocator's peak allocated and reserved bytes. CPU: how far the process's
    resident set grew above where it stood when the block began.
    """

    device: str
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    peak_rss_growth: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"device": self.device}
        for key in ("peak_allocated", "peak_reserved", "peak_rss_growth"):
            value = getattr(self, key)
            if value is not None:
                out[f"{key}_bytes"] = value
        return out

    def summary(self) -> str:
        mib = 1024 * 1024
        if self.peak_reserved is not None:
            return (
                f"peak CUDA memory {self.peak_allocated / mib:.1f} MiB allocated, "
                f"{self.peak_reserved / mib:.1f} MiB reserved"
            )
        if self.peak_rss_growth is not None:
            return f"peak resident memory growth {self.peak_rss_growth / mib:.1f} MiB"
        return "peak memory not measured on this platform"


@contextmanager
def measure_peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Measure peak memory of the enclosed block on ``device`` (fills the yielded object)."""
    result = PeakMemory(device=device.type)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        synchronize(device)
        result.peak_allocated = torch.cuda.max_memory_allocated(device)
        result.peak_reserved = torch.cuda.max_memory_reserved(device)
        return
    if device.type != "cpu":
        yield result
        return
    # The peak mark is reset before the starting point is read: memory another thread frees
    # in between would otherwise leave the start above the new mark, hiding the block's growth.
    reset = _reset_peak_rss()
    start = _status_kib("VmRSS")
    if start is None:
        yield result
        return
    if reset:
        yield result
        peak = _status_kib("VmHWM") or start
        result.peak_rss_growth = max(0, peak - start) * 1024
        return
    # No clear_refs: sample the resident set from a thread instead (misses very short peaks).
    peak_seen = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak_seen[0] = max(peak_seen[0], _status_kib("VmRSS") or 0)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result.peak_rss_growth = max(0, peak_seen[0] - start) * 1024
