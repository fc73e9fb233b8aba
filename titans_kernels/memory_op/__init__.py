"""``neural_memory``: the chunked neural long-term memory update of Titans (TITANS_SPEC section 1).

    out, (weights_T, momenta_T) = neural_memory(q, k, v, lr, momentum, forget, weights,
                                                momenta=None, chunk_size=16, backend="auto",
                                                step_budget=None)

q, k, v: [B, T, H, d_h]; lr, momentum, forget (theta, eta, alpha): [B, T, H]; weights: one tensor
per MLP layer, [H, d_in, d_out] (a learned init shared by the batch) or [B, H, d_in, d_out] (a carried
state); momenta: None (zeros) or tensors shaped [B, H, d_in, d_out]. step_budget: None (theta as given)
or the most step each token's key may take within its chunk (step_budget.py), applied before any backend. Returns ``out`` [B, T, H, d_h] in
q's dtype and the state after the last token, in fp32 (fp64 when any input is fp64).
"""

import importlib.util

import torch

from .checks import check_arguments
from .torch_backend import neural_memory_chunked
from .sequential import neural_memory_sequential
from .step_budget import chunk_step_budget
from .triton_backend import neural_memory_triton

# name -> implementation; every implementation takes the validated arguments plus the compute dtype.
BACKENDS = {
    "sequential": neural_memory_sequential,
    "torch": neural_memory_chunked,
}
# The Triton kernels need the triton package (bundled with CUDA builds of torch). It is imported at
# the first launch, not here: TRITON_INTERPRET must be set before triton is first imported.
if importlib.util.find_spec("triton") is not None:
    BACKENDS["triton"] = neural_memory_triton
KNOWN_BACKENDS = ("auto", "sequential", "torch", "triton")


def available_backends() -> tuple:
    return tuple(BACKENDS)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The implementation a backend name means on ``device``; "auto" picks the fastest available."""
    if not isinstance(backend, str) or backend not in KNOWN_BACKENDS:
        raise ValueError(f"backend must be one of {list(KNOWN_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and "triton" in BACKENDS else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not available in this installation; available: {list(BACKENDS)}")
    return backend


def neural_memory(q, k, v, lr, momentum, forget, weights, momenta=None, chunk_size=16, backend="auto",
                  step_budget=None):
    check_arguments(q, k, v, lr, momentum, forget, weights, momenta, chunk_size, step_budget)
    name = resolve_backend(backend, q.device)
    if step_budget is not None:
        lr = chunk_step_budget(lr, k, chunk_size, step_budget)
    tensors = (q, k, v, lr, momentum, forget, *weights, *(momenta or ()))
    compute_dtype = torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32
    out, weights_T, momenta_T = BACKENDS[name](
        q, k, v, lr, momentum, forget, tuple(weights), None if momenta is None else tuple(momenta),
        chunk_size, compute_dtype,
    )
    return out.to(q.dtype), (tuple(weights_T), tuple(momenta_T))
