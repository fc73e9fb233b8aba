"""The attention kernels compute one function: flex_attention (uncompiled on CPU) equals SDPA with the
explicit mask, and both equal a direct softmax, for windows, prefixes and streaming offsets."""

import math

import pytest
import torch

from titans_megatron import build_model
from titans_core.attention_core import attention_mask, prefixed_attention
from tests.titans_megatron.model_configs import small_config


def direct(q, k, v, pk, pv, window, offset):
    keys, values = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
    scores = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = attention_mask(q.shape[2], pk.shape[2], window, q.device, offset, k.shape[2])
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ values


@pytest.mark.parametrize("window,prefix,offset", [(None, 0, 0), (16, 4, 0), (7, 3, 0), (16, 4, 9), (None, 2, 5)])
def test_kernels_agree(window, prefix, offset):
    g = torch.Generator().manual_seed(0)
    Tq = 40
    q = torch.randn(2, 3, Tq, 16, generator=g)
    k, v = (torch.randn(2, 3, Tq + offset, 16, generator=g) for _ in range(2))
    pk, pv = (torch.randn(2, 3, prefix, 16, generator=g) for _ in range(2))
    ref = direct(q, k, v, pk, pv, window, offset)
    for backend in ("sdpa", "flex"):
        out = prefixed_attention(q, k, v, pk if prefix else None, pv if prefix else None, window, offset, backend)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{backend}: {m}")


@pytest.mark.parametrize("seed", range(6))
def test_plain_causal_takes_sdpa_is_causal_and_equals_the_mask(seed, monkeypatch):
    """Full causal attention with no prefix (Transformer++) calls SDPA with is_causal=True and no mask,
    and gives the explicit mask's output at random shapes; anything else keeps the mask."""
    g = torch.Generator().manual_seed(seed)
    B, H, T, d = (int(torch.randint(1, n, (1,), generator=g)) for n in (3, 5, 50, 33))
    q, k, v = (torch.randn(B, H, T, d, generator=g, dtype=torch.float64) for _ in range(3))
    window = [None, T, T + 5][seed % 3]  # a window no shorter than the sequence cuts nothing
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(kw) or sdpa(*a, **kw))
    out = prefixed_attention(q, k, v, window=window, backend="sdpa")
    assert calls[-1].get("is_causal") is True and calls[-1].get("attn_mask") is None
    mask = attention_mask(T, 0, window, q.device)
    torch.testing.assert_close(out, sdpa(q, k, v, attn_mask=mask), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, direct(q, k, v, q[:, :, :0], v[:, :, :0], window, 0), rtol=1e-10, atol=1e-10)
    if T > 1:  # a window that cuts, or a prefix, keeps the explicit mask
        prefixed_attention(q, k, v, window=T - 1, backend="sdpa")
        assert calls[-1].get("attn_mask") is not None
        prefixed_attention(q, k, v, q[:, :, :1], v[:, :, :1], backend="sdpa")
        assert calls[-1].get("attn_mask") is not None


@pytest.mark.parametrize("seed", range(10))
def test_banded_window_equals_the_direct_softmax_forward_and_backward(seed, monkeypatch):
    """A whole sequence at least two windows long goes to SDPA in blocks of ``window`` queries, every
    mask at most [window, P + 2 * window] (never [T, P + T]), and gives the direct masked softmax's output
    and gradients at random shapes (T a multiple of the window or not, with and without a prefix)."""
    g = torch.Generator().manual_seed(seed)
    sizes = ((1, 3), (1, 4), (1, 12), (0, 5), (1, 17))
    B, H, W, P, d = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in sizes)
    T = 2 * W + int(torch.randint(0, 5 * W, (1,), generator=g))
    leaves = [torch.randn(B, H, n, d, generator=g, dtype=torch.float64, requires_grad=True) for n in (T, T, T, P, P)]
    q, k, v, pk, pv = leaves
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: masks.append(kw.get("attn_mask")) or sdpa(*a, **kw))
    out = prefixed_attention(q, k, v, pk if P else None, pv if P else None, W, backend="sdpa")
    ref = direct(q, k, v, pk, pv, W, 0)
    assert len(masks) == 2  # block 0, then every other block in one call
    assert all(m is not None and m.shape[0] == W and m.shape[1] <= P + 2 * W for m in masks), [m.shape for m in masks]
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    cotangent = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, leaves, cotangent, allow_unused=True)
    want = torch.autograd.grad(ref, leaves, cotangent, allow_unused=True)
    for name, a, b in zip("q k v pk pv".split(), got, want):
        if b is not None and b.numel():  # no prefix: nothing to compare
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"d{name}: {m}")


def test_transformer_pp_forward_uses_is_causal(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(kw) or sdpa(*a, **kw))
    model = build_model(small_config("transformer++", attention_backend="sdpa"))
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 32), generator=torch.Generator().manual_seed(0)))
    assert calls and all(kw.get("is_causal") is True and kw.get("attn_mask") is None for kw in calls)

@pytest.mark.parametrize("window,prefix,offset", [(None, 0, 0), (None, 3, 6), (5, 2, 0)])
def test_aligned_keys_are_seen_like_the_key_at_their_position(window, prefix, offset):
    """A second key per position (MAC's own-query retrievals): a direct loop over queries, each
    softmax over the prefix, the keys it may see and the aligned keys at the same positions."""
    g = torch.Generator().manual_seed(1)
    Tq, d = 12, 8
    q = torch.randn(2, 3, Tq, d, generator=g, dtype=torch.float64)
    k, v, ak, av = (torch.randn(2, 3, Tq + offset, d, generator=g, dtype=torch.float64) for _ in range(4))
    pk, pv = (torch.randn(2, 3, prefix, d, generator=g, dtype=torch.float64) for _ in range(2))
    ref = torch.empty_like(q)
    for i in range(Tq):
        pos = i + offset
        seen = [j for j in range(Tq + offset) if j <= pos and (window is None or pos - j < window)]
        keys = torch.cat([pk, k[:, :, seen], ak[:, :, seen]], 2)
        values = torch.cat([pv, v[:, :, seen], av[:, :, seen]], 2)
        ref[:, :, i] = ((q[:, :, i:i + 1] @ keys.transpose(-1, -2)) / math.sqrt(d)).softmax(-1).matmul(values)[:, :, 0]
    for backend in ("sdpa", "flex"):
        out = prefixed_attention(q, k, v, pk if prefix else None, pv if prefix else None, window, offset, backend,
                                 aligned_k=ak, aligned_v=av)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6, msg=lambda m: f"{backend}: {m}")


@pytest.mark.parametrize("variant", ["mag", "mac", "transformer++"])
def test_model_logits_equal_across_backends(variant):
    """Forward only: flex_attention has no backward on CPU (it has on CUDA, where auto uses it)."""
    ids = torch.randint(0, 97, (1, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outs = [build_model(small_config(variant, attention_backend=b), seed=4)(ids) for b in ("sdpa", "flex")]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"attention_backend must be one of \['auto', 'sdpa', 'flex'\], got 'fa9'"):
        small_config("mag", attention_backend="fa9")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_on_cuda_equals_sdpa_forward_and_backward(dtype):
    """T 500 = 4 windows of 128 less 12: SDPA takes the banded form (padded), flex its block mask."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 500, 64, generator=g).to("cuda", dtype).requires_grad_() for _ in range(3))
    pk, pv = (torch.randn(2, 4, 16, 64, generator=g).to("cuda", dtype).requires_grad_() for _ in range(2))
    grads = {}
    for backend in ("sdpa", "flex"):
        out = prefixed_attention(q, k, v, pk, pv, 128, 0, backend)
        out.float().square().sum().backward()
        grads[backend] = [out.detach()] + [t.grad.clone() for t in (q, k, v, pk, pv)]
        for t in (q, k, v, pk, pv):
            t.grad = None
    for name, a, b in zip(["out", "dq", "dk", "dv", "dpk", "dpv"], grads["sdpa"], grads["flex"]):
        if dtype == torch.float32:
            torch.testing.assert_close(b, a, rtol=2e-3, atol=2e-3, msg=lambda m: f"{name}: {m}")
        else:  # bf16: two kernels' roundings, compared as a whole
            assert ((b.float() - a.float()).norm() / a.float().norm()).item() < 2e-2, name
