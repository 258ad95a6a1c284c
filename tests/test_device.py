"""Choosing a device and measuring peak memory, on every machine.

The CUDA and MPS choices are decided from what PyTorch reports (``torch.cuda.is_available()``,
``torch.cuda.device_count()``, ``torch.backends.mps.is_available()``), so these tests state what
it reports and check the decision: the same on a laptop, a GPU server and CI. The memory that
CUDA's allocator reports is measured for real only on a GPU (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import gc
import mmap
import threading
import time
from pathlib import Path

import pytest
import torch

from mnist_cnn import device as dev
from mnist_cnn.distributed import Parallel
from mnist_cnn.errors import ConfigError

MIB = 1024 * 1024


def _machine(monkeypatch, cuda: int = 0, mps: bool = False) -> None:
    """Make PyTorch report ``cuda`` GPUs and MPS or not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "mps", "picked"), [(2, True, "cuda"), (0, True, "mps"), (0, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, picked):
    _machine(monkeypatch, cuda=cuda, mps=mps)
    assert dev.select_device("auto").type == picked


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda", "PyTorch sees no CUDA GPU; use --device cpu"),
        ("cuda:0", "PyTorch sees no CUDA GPU; use --device cpu"),
        ("mps", "MPS is not available; use --device cpu"),
        ("tpu", "unknown device 'tpu': choose one of auto, cpu, cuda, mps"),
        ("auto:0", "unknown device 'auto:0'"),
        ("cuda:x", "the part after ':' must be a device number"),
        ("cuda:0001", "the part after ':' must be a device number"),
    ],
)
def test_a_device_this_machine_lacks_is_one_clear_error(monkeypatch, name, message):
    _machine(monkeypatch)
    with pytest.raises(ConfigError, match="^[^\n]*$") as err:
        dev.select_device(name)
    assert message in str(err.value)


def test_a_gpu_number_must_be_one_pytorch_sees(monkeypatch):
    _machine(monkeypatch, cuda=2)
    assert dev.select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="--device cuda:2: PyTorch sees 2 CUDA GPU"):
        dev.select_device("cuda:2")


def test_each_process_of_a_gpu_run_takes_its_own_gpu(monkeypatch):
    """Under torchrun, process ``LOCAL_RANK`` of a machine trains on GPU ``LOCAL_RANK``; more
    processes than GPUs, or MPS, are refused before anything runs."""
    _machine(monkeypatch, cuda=2, mps=True)
    assert Parallel(rank=3, world_size=4, local_rank=1).device() == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="process 2 on this machine needs GPU 2.*only 2 are"):
        Parallel(rank=2, world_size=4, local_rank=2).device()
    _machine(monkeypatch, cuda=0, mps=True)
    with pytest.raises(ConfigError, match="runs on CUDA or the CPU, not mps: use --device cpu"):
        Parallel(rank=0, world_size=2).device()
    assert Parallel(rank=0, world_size=2).device("cpu") == torch.device("cpu")
    assert Parallel().device() == torch.device("mps")  # one process may use MPS
    assert Parallel().broadcast_int(7) == 7  # one process: nothing to receive


def _grow_resident_set(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory, hold it a moment, free it.

    Fresh pages of their own mapping, not malloc's: a large array may be served from heap
    memory that earlier tests in this worker freed and that is still resident, and then the
    resident set does not grow at all (both cases of the test below failed so, measuring 0
    and 4 KiB, in a fresh-clone CI run; reproduced by freeing ten 20 MiB arrays below a live
    one, after which a 64 MiB ``np.ones`` grows it by 0.0 MiB and this mapping by 63.9)."""
    block = mmap.mmap(-1, nbytes)
    for i in range(0, nbytes, mmap.PAGESIZE):
        block[i] = 1  # one write per page makes it resident
    time.sleep(0.1)  # the sampling thread (every 5 ms) sees it even on a busy machine
    block.close()


@pytest.mark.parametrize("clear_refs", [True, False], ids=["peak mark", "sampled"])
def test_peak_memory_sees_a_block_that_was_freed_again(monkeypatch, clear_refs):
    """The kernel's peak mark where it can be reset; else a thread that samples the resident
    set (fails if the fallback never starts its sampler or reads the wrong field)."""
    if not clear_refs:
        monkeypatch.setattr(dev, "_reset_peak_rss", lambda: False)
    # The resident set is the whole process's: garbage that earlier tests in this worker left
    # must not be freed inside a measured block (it would hide part of the block).
    gc.collect()
    gc.disable()
    try:
        with dev.measure_peak_memory(torch.device("cpu")) as quiet:
            pass
        with dev.measure_peak_memory(torch.device("cpu")) as busy:
            _grow_resident_set(64 * MIB)
    finally:
        gc.enable()
    if not Path("/proc/self/status").is_file():  # not Linux: no resident set to read
        assert busy.summary() == "peak memory not measured on this platform"
        return
    why = (busy.peak_rss_growth, quiet.peak_rss_growth, [t.name for t in threading.enumerate()])
    assert busy.peak_rss_growth >= 60 * MIB, why
    assert quiet.peak_rss_growth < 16 * MIB, why
    assert busy.summary() == f"peak resident memory growth {busy.peak_rss_growth / MIB:.1f} MiB"
    assert busy.to_dict() == {"device": "cpu", "peak_rss_growth_bytes": busy.peak_rss_growth}


def test_no_memory_figure_is_made_up_where_none_can_be_read(monkeypatch):
    with dev.measure_peak_memory(torch.device("meta")) as other:
        pass
    monkeypatch.setattr(dev, "_status_kib", lambda name: None)  # no /proc/self/status
    with dev.measure_peak_memory(torch.device("cpu")) as blind:
        _grow_resident_set(MIB)
    for result in (other, blind):
        assert result.summary() == "peak memory not measured on this platform"
        assert set(result.to_dict()) == {"device"}


def test_the_hardware_line_says_which_libraries_are_held_below_the_cpu(monkeypatch):
    # ATEN_CPU_CAPABILITY alone leaves MKL's fp32 products on the CPU's widest vectors: a
    # recorded plan must show what was held, or an "AVX2" run is not what it says.
    for _, variable in dev.LIBRARY_ISA_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    plain = dev.hardware_description(torch.device("cpu"))
    assert "held at" not in plain and "torch kernels" in plain
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    held = dev.hardware_description(torch.device("cpu"))
    assert held.endswith("oneDNN held at AVX2, MKL held at AVX2)")
    assert held.startswith(plain[:-1])  # the same line, with the libraries added


_HEAP = """
import ctypes, json
libc = ctypes.CDLL(None)
size_t = ctypes.c_size_t if hasattr(libc, "mallinfo2") else ctypes.c_int  # glibc < 2.33
class Info(ctypes.Structure):
    _fields_ = [(n, size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo = getattr(libc, "mallinfo2", None) or libc.mallinfo
mallinfo.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def blocks(n, mib=16):  # n blocks: (bytes mapped while held, free top of the heap after)
    held = [libc.malloc(mib << 20) for _ in range(n)]
    mapped = mallinfo().hblkhd
    for b in held:
        libc.free(b)
    return mapped, mallinfo().keepcost
out = {"default": [blocks(1), blocks(8)]}  # before torch: glibc as a process starts
from mnist_cnn.device import keep_freed_memory
out["took"] = keep_freed_memory()
# 24 MiB: above the 16 MiB that glibc's own adaptive threshold has risen to by now
out["kept"] = [blocks(1, 24), blocks(8)]
print(json.dumps(out))
"""


@pytest.mark.slow  # a process of its own: the settings hold for the whole process
def test_kept_freed_memory_reuses_blocks_instead_of_handing_them_back() -> None:
    """glibc by default maps a big block afresh (and unmaps it when freed), and hands a freed
    heap top of 128 MiB back to the OS: the next step faults those pages in again (the
    fast preset's step: 3,000-4,300 faults a step in most processes, benchmarks/page_faults.py).
    With the fast plan's settings both stay in the heap for reuse. Where the C library is not
    glibc, nothing is set."""
    import json
    import subprocess
    import sys

    if not dev.can_keep_freed_memory():
        assert not dev.keep_freed_memory()
        return
    out = subprocess.run([sys.executable, "-c", _HEAP], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    got = json.loads(out.stdout.splitlines()[-1])
    mib = 1 << 20
    (mapped_one, _), (_, top_after_eight) = got["default"]
    assert mapped_one >= 16 * mib and top_after_eight < 16 * mib, got  # glibc's defaults
    assert got["took"]
    (kept_one, _), (_, kept_top) = got["kept"]
    assert kept_one < mapped_one - 8 * mib, got  # 24 MiB from the heap, not mapped
    assert kept_top >= 128 * mib, got  # freed, and kept
