"""Two calls split at a chunk boundary, the state carried, equal one call (outputs, state, gradients)."""

import pytest
import torch

from titans_kernels import neural_memory
from tests.titans_kernels.memory_inputs import leaves, make_inputs


@pytest.mark.parametrize("backend", ["sequential", "torch"])
@pytest.mark.parametrize("split_chunks", [1, 3])
def test_split_call_equals_one_call(backend, split_chunks):
    chunk, T = 4, 23
    split = split_chunks * chunk
    whole = make_inputs(2, T, 3, 4, 2, seed=5, requires_grad=True)
    parts = make_inputs(2, T, 3, 4, 2, seed=5, requires_grad=True)

    out, (W_T, S_T) = neural_memory(**whole, chunk_size=chunk, backend=backend)

    seq = ("q", "k", "v", "lr", "momentum", "forget")
    first = {k: parts[k][:, :split] for k in seq}
    second = {k: parts[k][:, split:] for k in seq}
    out1, (W1, S1) = neural_memory(**first, weights=parts["weights"], chunk_size=chunk, backend=backend)
    out2, (W2, S2) = neural_memory(**second, weights=W1, momenta=S1, chunk_size=chunk, backend=backend)

    torch.testing.assert_close(torch.cat([out1, out2], dim=1), out, rtol=1e-12, atol=1e-12)
    for a, b in zip(W2 + S2, W_T + S_T):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    g = torch.Generator().manual_seed(0)
    probe = torch.randn(out.shape, generator=g, dtype=out.dtype)
    (out * probe).sum().backward()
    (torch.cat([out1, out2], dim=1) * probe).sum().backward()
    for a, b in zip(leaves(whole), leaves(parts)):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12)


def test_split_inside_a_chunk_differs():
    """A split that is not at a chunk boundary changes the result: the chunk grid is part of the math."""
    inputs = make_inputs(1, 16, 1, 4, 2, seed=2)
    seq = ("q", "k", "v", "lr", "momentum", "forget")
    out, _ = neural_memory(**inputs, chunk_size=8, backend="torch")
    out1, (W1, S1) = neural_memory(**{k: inputs[k][:, :5] for k in seq}, weights=inputs["weights"], chunk_size=8)
    out2, _ = neural_memory(**{k: inputs[k][:, 5:] for k in seq}, weights=W1, momenta=S1, chunk_size=8)
    assert (torch.cat([out1, out2], 1) - out).abs().max() > 1e-6
