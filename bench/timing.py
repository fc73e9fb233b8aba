"""How benchmarks time work: warm-up, synchronised repeats, the median; peak memory over one step; and
a GEMM measured in the same run as the denominator of "% of peak"."""

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, warmup: int, repeats: int, device: torch.device):
    """(median seconds of ``repeats`` calls after ``warmup`` calls, peak MiB of one call above what was
    allocated before it; None off CUDA)."""
    for _ in range(warmup):
        step()
    sync(device)
    peak = None
    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak


def matmul_peak(n: int, device: torch.device, dtype: torch.dtype) -> float:
    """TFLOP/s of an n x n x n GEMM in ``dtype``."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def describe_error(e: BaseException) -> str:
    """One line for a row that could not run (a missing package, out of memory, ...)."""
    if isinstance(e, ImportError):
        return f"not installed ({e.name or e})"
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of memory"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
