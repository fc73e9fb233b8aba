"""The step budget (titans_kernels/memory_op/step_budget.py): equal to a token loop at many shapes, causal
within the chunk, the stated totals for repeated and orthogonal keys, differentiable, streamable, and what
it is for: the deep memory holds distinct pairs at a large theta and stays bounded on a repeated key."""

import math

import pytest
import torch
import torch.nn.functional as F

from bench.memory_capacity import accuracy, memory_reads, repeated_key_peak, task
from titans_kernels import neural_memory
from titans_kernels.memory_op.step_budget import chunk_step_budget


def token_loop(lr, k, chunk, budget):
    out = torch.empty_like(lr)
    B, T, H = lr.shape
    for b in range(B):
        for h in range(H):
            for t in range(T):
                used = sum(float(out[b, i, h]) * float(k[b, t, h] @ k[b, i, h]) ** 2 for i in range(t - t % chunk, t))
                out[b, t, h] = min(float(lr[b, t, h]), max(0.0, budget - used))
    return out


def inputs(B, T, H, d, seed, repeat=True):
    g = torch.Generator().manual_seed(seed)
    k = F.normalize(torch.randn(B, T, H, d, generator=g, dtype=torch.float64), dim=-1)
    if repeat and T > 6:
        k[:, 3:7] = k[:, 2:3]  # a key repeated inside a chunk
    return torch.rand(B, T, H, generator=g, dtype=torch.float64), k


@pytest.mark.parametrize("seed", range(12))
def test_equals_the_token_loop(seed):
    g = torch.Generator().manual_seed(100 + seed)
    B, T, H, d = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 3), (1, 50), (1, 4), (2, 17)))
    chunk = int(torch.randint(1, 17, (1,), generator=g))
    budget = float(torch.rand(1, generator=g)) + 0.1
    lr, k = inputs(B, T, H, d, seed)
    torch.testing.assert_close(chunk_step_budget(lr, k, chunk, budget), token_loop(lr, k, chunk, budget),
                               rtol=0, atol=1e-12)


def test_causal_within_the_chunk():
    lr, k = inputs(1, 32, 2, 8, 0)
    base = chunk_step_budget(lr, k, 16, 0.5)
    for s in (0, 5, 15, 16, 20, 31):
        moved = k.clone()
        moved[:, s] = F.normalize(torch.randn_like(moved[:, s]), dim=-1)
        changed = (chunk_step_budget(lr, moved, 16, 0.5) - base).abs().amax(dim=(0, 2)) > 0
        later_in_chunk = (torch.arange(32) >= s) & (torch.arange(32) // 16 == s // 16)
        assert not (changed & ~later_in_chunk).any(), s


def test_repeated_key_spends_the_budget_once_and_orthogonal_keys_keep_theta():
    d, C = 16, 16
    key = F.normalize(torch.randn(1, 1, 1, d, dtype=torch.float64), dim=-1).expand(1, 2 * C, 1, d)
    lr = torch.full((1, 2 * C, 1), 0.3, dtype=torch.float64)
    out = chunk_step_budget(lr, key, C, 0.5)
    assert torch.allclose(out.reshape(2, C).sum(-1), torch.full((2,), 0.5, dtype=torch.float64))
    eye = torch.eye(d, dtype=torch.float64)[None, :, None]                     # d orthogonal keys, one chunk
    lr = torch.full((1, d, 1), 0.8, dtype=torch.float64)
    assert torch.equal(chunk_step_budget(lr, eye, C, 0.5), torch.full_like(lr, 0.5))
    assert torch.equal(chunk_step_budget(lr * 0.5, eye, C, 0.5), lr * 0.5)


def test_gradients_match_finite_differences():
    lr, k = inputs(1, 20, 2, 4, 3, repeat=False)
    lr = (0.05 + 0.1 * lr).requires_grad_()  # below the budget's kinks for most tokens, above for some
    k = k.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: chunk_step_budget(a, F.normalize(b, dim=-1), 8, 0.3), (lr, k))


def _op_inputs(T, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (F.normalize(torch.randn(2, T, 2, 8, generator=g, dtype=torch.float64), dim=-1) for _ in range(3))
    lr = torch.rand(2, T, 2, generator=g, dtype=torch.float64)
    momentum, forget = torch.rand(2, T, 2, generator=g, dtype=torch.float64), 0.05 * torch.rand(2, T, 2, generator=g, dtype=torch.float64)
    weights = (torch.randn(2, 8, 16, generator=g, dtype=torch.float64) / 8 ** 0.5,
               torch.randn(2, 16, 8, generator=g, dtype=torch.float64) / 4)
    return (q, k, v, lr, momentum, forget), weights


def test_split_calls_and_backends_agree():
    """Two calls split at a chunk boundary equal one call; the token-loop oracle equals the chunked form."""
    args, weights = _op_inputs(40, 0)
    whole, state = neural_memory(*args, weights, chunk_size=8, backend="torch", step_budget=0.5)
    first, mid = neural_memory(*(a[:, :16] for a in args), weights, chunk_size=8, backend="torch", step_budget=0.5)
    second, end = neural_memory(*(a[:, 16:] for a in args), mid[0], mid[1], chunk_size=8, backend="torch", step_budget=0.5)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=1e-12)
    oracle, _ = neural_memory(*args, weights, chunk_size=8, backend="sequential", step_budget=0.5)
    torch.testing.assert_close(oracle, whole, rtol=1e-9, atol=1e-10)
    raw, _ = neural_memory(*args, weights, chunk_size=8, backend="torch")
    assert (raw - whole).abs().max() > 1e-3  # the budget acts at these rates


@pytest.mark.parametrize("budget", [0, -1.0, "0.5"])
def test_bad_budget_is_named(budget):
    args, weights = _op_inputs(8, 0)
    with pytest.raises(ValueError, match="step_budget"):
        neural_memory(*args, weights, chunk_size=8, step_budget=budget)


CAPACITY = {"head_dim": 32, "expansion": 4, "chunk": 16, "gap": 160, "forget": 1e-3, "repeat_chunks": 4}


@pytest.mark.parametrize("pairs", [8, 16])
def test_deep_memory_holds_half_its_width_in_pairs_with_the_budget(pairs):
    """bench/memory_capacity.py's target at the op: depth 2 (E 4, d_h 32) at theta 1/4 with budget 1/2
    recalls D <= d_h / 2 pairs after 160 unwritten tokens (>= 0.95 in every seed); at theta 1/16, the
    largest step the raw op survives a repeated key at, it does not."""
    def recall(theta, budget):
        accs = []
        for seed in range(3):
            k, v, written, values, g = task(CAPACITY, pairs, "unwritten", seed)
            with torch.no_grad():
                accs.append(accuracy(memory_reads(CAPACITY, 2, theta, budget, k, v, written, g), values))
        return min(accs)

    assert recall(0.25, 0.5) >= 0.95
    assert recall(1 / 16, None) < 0.9


def test_a_repeated_key_stays_bounded_with_the_budget():
    with torch.no_grad():
        for depth in (1, 2):
            assert repeated_key_peak(CAPACITY, depth, 0.25, None) > 1e3     # the raw step diverges there
            for theta in (0.25, 1.0):
                assert math.isfinite(peak := repeated_key_peak(CAPACITY, depth, theta, 0.5)) and peak < 2.0, (depth, theta, peak)
