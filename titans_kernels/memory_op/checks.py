"""Argument validation for ``neural_memory``: every failure says what was expected and what came."""

import torch


def _shape(x) -> str:
    return str(list(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _require_tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_arguments(q, k, v, lr, momentum, forget, weights, momenta, chunk_size, step_budget=None):
    """Raise ValueError on any argument that does not match TITANS_SPEC section 1's contract."""
    if step_budget is not None and not (isinstance(step_budget, (int, float)) and step_budget > 0):
        raise ValueError(f"step_budget must be None or a number > 0, got {step_budget!r}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        _require_tensor(name, x)
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape [B, T, H, d_h] (4 dims), got {_shape(x)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape [B, T, H, d_h], got q {_shape(q)}, k {_shape(k)}, v {_shape(v)}")
    B, T, H, d = q.shape
    if B < 1 or T < 1 or H < 1 or d < 1:
        raise ValueError(f"q must have non-empty dims [B, T, H, d_h], got {_shape(q)}")

    for name, g in (("lr", lr), ("momentum", momentum), ("forget", forget)):
        _require_tensor(name, g)
        if tuple(g.shape) != (B, T, H):
            raise ValueError(f"{name} must have shape [B, T, H] = {[B, T, H]}, got {_shape(g)}")

    if not isinstance(weights, (tuple, list)) or len(weights) == 0:
        raise ValueError(f"weights must be a non-empty tuple of per-layer tensors, got {type(weights).__name__}")
    d_in = d
    for i, w in enumerate(weights):
        _require_tensor(f"weights[{i}]", w)
        if w.dim() == 3:
            lead = (H,)
        elif w.dim() == 4:
            lead = (B, H)
        else:
            raise ValueError(f"weights[{i}] must have shape [H, d_in, d_out] or [B, H, d_in, d_out], got {_shape(w)}")
        if tuple(w.shape[:-2]) != lead or w.shape[-2] != d_in:
            want = [*lead, d_in, "d_out"]
            raise ValueError(f"weights[{i}] must have shape {want} (H={H}, B={B}, d_in = previous layer's d_out), got {_shape(w)}")
        d_in = w.shape[-1]
    if d_in != d:
        raise ValueError(f"the last layer weights[{len(weights) - 1}] must map to d_h = {d}, got d_out = {d_in}")

    if momenta is not None:
        if not isinstance(momenta, (tuple, list)) or len(momenta) != len(weights):
            raise ValueError(f"momenta must be None or a tuple of {len(weights)} tensors (one per weight), got "
                             f"{type(momenta).__name__} of length {len(momenta) if isinstance(momenta, (tuple, list)) else '-'}")
        for i, (m, w) in enumerate(zip(momenta, weights)):
            _require_tensor(f"momenta[{i}]", m)
            want = (B, H, *w.shape[-2:])
            if tuple(m.shape) != want:
                raise ValueError(f"momenta[{i}] must have shape {list(want)} (as [B, H, d_in, d_out] of weights[{i}]), got {_shape(m)}")

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")

    tensors = [q, k, v, lr, momentum, forget, *weights, *(momenta or ())]
    devices = {x.device for x in tensors}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(str(x) for x in devices)}")
