"""What a benchmark step or state occupies: the bytes of a stream state's tensors, and the peak resident
set of one call on CPU (where torch keeps no allocation count; CUDA runs use max_memory_allocated)."""

import ctypes
import ctypes.util

import torch


def state_bytes(state) -> int:
    """Bytes of every tensor in a stream state (nested dicts, tuples and lists)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (tuple, list)):
        return sum(state_bytes(v) for v in state)
    return 0


def trim_heap() -> bool:
    """Give the heap's free memory back to the OS (glibc ``malloc_trim``), so that what earlier calls
    freed and glibc kept does not hide the next call's allocations from its peak RSS. CPU only."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc
        return False
    return True


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def rss_peak_mib(step):
    """Peak resident-set increase of one call of ``step`` in MiB, the heap trimmed first (Linux: writing 5
    to /proc/self/clear_refs resets the high-water mark VmHWM to the current RSS); None elsewhere."""
    trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
    except (OSError, StopIteration):
        return None
    step()
    return (_status_kib("VmHWM") - before) / 1024
