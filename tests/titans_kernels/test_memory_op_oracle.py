"""The oracle itself, checked against definitions that share no code with it: inner gradients by
torch.autograd.grad of the associative loss, and the coefficient matrices by the spec's ratio formulas."""

import pytest
import torch
import torch.nn.functional as F

from titans_kernels import neural_memory
from titans_kernels.memory_op.gates import chunk_coefficients
from tests.titans_kernels.memory_inputs import make_inputs


def _mlp(weights, x):
    for i, w in enumerate(weights):
        x = x @ w
        if i < len(weights) - 1:
            x = F.gelu(x)
    return x


def autograd_oracle(q, k, v, lr, momentum, forget, weights, momenta, chunk_size):
    """TITANS_SPEC section 1 read literally, one (batch, head) and one token at a time."""
    B, T, H, _ = q.shape
    out = torch.zeros_like(q)
    finals = []
    for b in range(B):
        for h in range(H):
            W = [w[h] if w.dim() == 3 else w[b, h] for w in weights]
            S = [torch.zeros_like(w) for w in W] if momenta is None else [m[b, h] for m in momenta]
            for start in range(0, T, chunk_size):
                W_chunk = [w.detach().requires_grad_() for w in W]
                grads = []
                for t in range(start, min(start + chunk_size, T)):
                    loss = ((_mlp(W_chunk, k[b, t, h]) - v[b, t, h]) ** 2).sum()
                    grads.append(torch.autograd.grad(loss, W_chunk))
                for i, t in enumerate(range(start, min(start + chunk_size, T))):
                    S = [momentum[b, t, h] * s - lr[b, t, h] * u for s, u in zip(S, grads[i])]
                    W = [(1 - forget[b, t, h]) * w + s for w, s in zip(W, S)]
                    out[b, t, h] = _mlp(W, q[b, t, h])
            finals.append((W, S))
    return out, finals


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_sequential_matches_autograd_oracle(depth, chunk_size):
    inputs = make_inputs(2, 13, 2, 4, depth, carried=depth == 2, seed=depth + chunk_size)
    with torch.no_grad():
        out, (W_T, S_T) = neural_memory(**inputs, chunk_size=chunk_size, backend="sequential")
    ref_out, finals = autograd_oracle(**inputs, chunk_size=chunk_size)
    torch.testing.assert_close(out, ref_out.detach(), rtol=1e-10, atol=1e-12)
    for idx, (W, S) in enumerate(finals):
        b, h = divmod(idx, 2)
        for layer in range(depth):
            torch.testing.assert_close(W_T[layer][b, h], W[layer].detach(), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(S_T[layer][b, h], S[layer].detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 2])
def test_chunk_one_is_online_recurrence(depth):
    """With b = 1 every gradient is taken at the weights of the previous token (online learning)."""
    inputs = make_inputs(2, 17, 2, 4, depth, seed=11 + depth)
    with torch.no_grad():
        out, _ = neural_memory(**inputs, chunk_size=1, backend="torch")
    ref_out, _ = autograd_oracle(**inputs, chunk_size=1)
    torch.testing.assert_close(out, ref_out.detach(), rtol=1e-10, atol=1e-12)
    # ... and it is not what a larger chunk computes (the test can tell them apart)
    with torch.no_grad():
        chunked, _ = neural_memory(**inputs, chunk_size=8, backend="torch")
    assert (chunked - out).abs().max() > 1e-6


def test_coefficients_match_ratio_formulas():
    """G, beta, phi, M, n from the spec's ratio formulas (gates kept away from 0 so ratios are safe)."""
    g = torch.Generator().manual_seed(0)
    n = 7
    a, m = torch.rand(5, n, generator=g, dtype=torch.float64), 0.2 + 0.8 * torch.rand(5, n, generator=g, dtype=torch.float64)
    alpha = 0.5 * torch.rand(5, n, generator=g, dtype=torch.float64)
    coef = chunk_coefficients(a, m, alpha)
    f = 1 - alpha
    beta, M = torch.cumprod(f, -1), torch.cumprod(m, -1)
    nji = torch.zeros(5, n, n, dtype=torch.float64)  # nji[:, j, i] = a_j prod_{r=j+1..i} m_r
    for j in range(n):
        for i in range(j, n):
            nji[:, j, i] = a[:, j] * M[:, i] / M[:, j]
    G = torch.zeros(5, n, n, dtype=torch.float64)
    phi = torch.zeros(5, n, dtype=torch.float64)
    for t in range(n):
        phi[:, t] = sum(beta[:, t] / beta[:, i] * M[:, i] for i in range(t + 1))
        for j in range(t + 1):
            G[:, t, j] = sum(beta[:, t] / beta[:, i] * nji[:, j, i] for i in range(j, t + 1))
    torch.testing.assert_close(coef.G, G)
    torch.testing.assert_close(coef.beta, beta)
    torch.testing.assert_close(coef.phi, phi)
    torch.testing.assert_close(coef.M, M)
    torch.testing.assert_close(coef.Dm[:, -1, :] * coef.lr, nji[:, :, -1])


def test_coefficients_long_chunk_no_underflow_nan():
    """Tiny gates over a long chunk: ratio formulas would give 0/0; the products stay finite."""
    n = 256
    small = torch.full((1, n), 1e-3, dtype=torch.float32)
    coef = chunk_coefficients(small, small, 1 - small)
    for x in coef:
        assert torch.isfinite(x).all()
    assert coef.G[0, -1, -1] == pytest.approx(1e-3)
