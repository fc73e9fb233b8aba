"""Low-precision inputs: fp32 state, outputs in the input dtype, errors within the stated tolerances.

Stated tolerances (docs/memory_op.md), as max |error| / max |float64 value|, memory depth 2, E 4,
d_h 32, T 200, chunk 16:
  against float64 on the same rounded inputs (the op's own arithmetic):
      bf16: output 1e-2, state 1e-5, input gradients 1.5e-2;  fp16: 2e-3, 1e-5, 2e-3
  against float64 on the unrounded inputs (includes rounding the inputs):
      bf16: output 2e-2, state 6e-2;  fp16: output 3e-3, state 1e-2
"""

import pytest
import torch

from titans_kernels import neural_memory
from tests.titans_kernels.memory_inputs import make_inputs

TOLERANCES = {  # dtype: (output, state, gradients) same inputs; (output, state) unrounded inputs
    torch.bfloat16: ((1e-2, 1e-5, 1.5e-2), (2e-2, 6e-2)),
    torch.float16: ((2e-3, 1e-5, 2e-3), (3e-3, 1e-2)),
}


def _cast(inputs, fn):
    return {k: (tuple(fn(t) for t in x) if isinstance(x, tuple) else None if x is None else fn(x))
            for k, x in inputs.items()}


def _rel(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max()).item()


def _run(inputs):
    for x in inputs.values():
        for t in (x if isinstance(x, tuple) else (x,)):
            if t is not None:
                t.requires_grad_()
    out, (W, S) = neural_memory(**inputs, chunk_size=16, backend="torch")
    g = torch.Generator().manual_seed(9)
    (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum().backward()
    return out, W + S, [inputs[k].grad for k in ("q", "k", "v", "lr", "momentum", "forget")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("seed", [0, 1])
def test_low_precision_within_tolerance(dtype, seed):
    exact = make_inputs(2, 200, 4, 32, 2, expansion=4, seed=seed)
    low = _cast(exact, lambda t: t.detach().to(dtype))
    same = _cast(low, lambda t: t.detach().double())
    out, state, grads = _run(low)
    ref_out, ref_state, ref_grads = _run(same)
    with torch.no_grad():
        unrounded_out, (W, S) = neural_memory(**_cast(exact, lambda t: t.detach()), chunk_size=16, backend="torch")

    assert out.dtype == dtype and all(s.dtype == torch.float32 for s in state)
    assert all(g.dtype == dtype for g in grads)
    (t_out, t_state, t_grad), (u_out, u_state) = TOLERANCES[dtype]
    assert _rel(out, ref_out) <= t_out
    assert max(_rel(a, b) for a, b in zip(state, ref_state)) <= t_state
    assert max(_rel(a, b) for a, b in zip(grads, ref_grads)) <= t_grad
    assert _rel(out, unrounded_out) <= u_out
    assert max(_rel(a, b) for a, b in zip(state, W + S)) <= u_state


def test_float32_inputs_float32_state():
    inputs = _cast(make_inputs(1, 33, 2, 8, 2, seed=0), lambda t: t.float())
    out, (W, S) = neural_memory(**inputs, chunk_size=16)
    ref, (rW, rS) = neural_memory(**_cast(inputs, lambda t: t.double()), chunk_size=16)
    assert out.dtype == torch.float32 and W[0].dtype == torch.float32
    assert _rel(out, ref) < 1e-5
