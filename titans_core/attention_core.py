"""Our attention core: causal, optional sliding window, a prefix visible to every query.

Works on per-head tensors [B, H, T, d] on any device. Two kernels compute the same function:
- ``sdpa``: torch's scaled_dot_product_attention, in one of three forms by the mask's shape:
  ``is_causal=True`` and no mask where the mask is the plain lower triangle (full causal attention with
  no prefix: Transformer++), which keeps SDPA's flash kernel available; blocks of ``window`` queries, each
  over the prefix and the two key blocks it can reach, where a window cuts a whole sequence at least two
  windows long (training's sliding window: memory and work O(T * window), not O(T^2), which is what lets
  context parallelism buy sequence length); otherwise one explicit boolean mask (O(T^2), short pieces);
- ``flex``: torch's flex_attention with a block mask built from the same rule (compiled on CUDA,
  where it skips fully masked blocks; runs uncompiled on CPU, which is how it is tested there).
``auto`` takes ``sdpa`` for now: the compiled flex path has not yet run on a GPU here (a
``@pytest.mark.gpu`` test checks it there); flip ``auto`` to flex on CUDA once it has. The prefix (persistent tokens, MAC's memory
tokens) is visible to every query whatever the window; queries see themselves and earlier tokens no
further back than ``window`` (None: full causal).
"""

import functools
from typing import Optional

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flex")


def attention_mask(num_queries: int, num_prefix: int, window: Optional[int], device, query_offset: int = 0,
                   num_keys: Optional[int] = None) -> torch.Tensor:
    """Boolean [num_queries, num_prefix + num_keys] mask, True where attention is allowed.

    Query i sits at position ``query_offset + i`` of the key sequence (streaming keeps older keys).
    """
    num_keys = num_queries + query_offset if num_keys is None else num_keys
    q_pos = torch.arange(num_queries, device=device)[:, None] + query_offset
    k_pos = torch.arange(num_keys, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    prefix = torch.ones(num_queries, num_prefix, dtype=torch.bool, device=device)
    return torch.cat([prefix, allowed], dim=1)


@functools.lru_cache(maxsize=64)
def _flex_block_mask(num_queries, num_prefix, num_keys, window, query_offset, device, aligned=False):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        k_pos, q_pos = kv_idx - num_prefix, q_idx + query_offset
        if aligned:  # the second block of keys sits at the positions of the first
            k_pos = k_pos - (k_pos >= num_keys).to(k_pos.dtype) * num_keys
        allowed = (kv_idx < num_prefix) | (k_pos <= q_pos)
        if window is not None:
            allowed = (kv_idx < num_prefix) | ((k_pos <= q_pos) & (q_pos - k_pos < window))
        return allowed

    kv_len = num_prefix + num_keys * (2 if aligned else 1)
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=num_queries, KV_LEN=kv_len, device=device)


@functools.lru_cache(maxsize=1)
def _flex_kernel(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if compiled else flex_attention


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {list(BACKENDS)}, got {backend!r}")
    return "sdpa" if backend == "auto" else backend


def is_plain_causal(num_queries: int, num_keys: int, num_prefix: int, window: Optional[int], query_offset: int,
                    aligned: bool) -> bool:
    """The mask is exactly the lower triangle (no prefix, no window that cuts, queries = keys)."""
    return (num_prefix == 0 and not aligned and query_offset == 0 and num_queries == num_keys
            and (window is None or window >= num_keys))


def is_banded(num_queries: int, num_keys: int, window: Optional[int], query_offset: int, aligned: bool) -> bool:
    """A whole sequence (queries = keys) that the window cuts into at least two blocks: the banded form
    holds O(T * window) scores; shorter pieces (streaming, MAC's segments) keep the one mask."""
    return (window is not None and not aligned and query_offset == 0 and num_queries == num_keys
            and num_keys >= 2 * window)


def banded_attention(q, k, v, prefix_k, prefix_v, window: int):
    """Sliding-window attention over [prefix || keys] in blocks of ``window`` queries: the queries of block
    i can see keys of blocks i - 1 and i only (and the prefix), so blocks 1.. are one SDPA call over
    P + 2 * window keys each with one shared [window, P + 2 * window] mask; block 0 (nothing before it)
    is a call of its own. Blocks go into SDPA's batch dim, not its heads: CUDA's memory-efficient kernel
    puts heads on a grid dim capped at 65,535 and splits only the batch.

    q, k, v: [B, H, T, d] with T >= 2 * window; prefix_k/v: [B, H, P, d] (P may be 0).
    """
    B, H, T, d = q.shape
    W, P = window, prefix_k.shape[2]
    n = -(-T // W)
    if n * W > T:  # padded keys sit after every real query, so causality already hides them
        q, k, v = (F.pad(t, (0, 0, 0, n * W - T)) for t in (q, k, v))
    first = F.scaled_dot_product_attention(q[:, :, :W], torch.cat([prefix_k, k[:, :, :W]], 2),
                                           torch.cat([prefix_v, v[:, :, :W]], 2),
                                           attn_mask=attention_mask(W, P, W, q.device))

    def blocks(t, start):  # [B, n - 1, H, W, d]: blocks 1..n-1 of t's queries, or their previous / own keys
        return t[:, :, start:start + (n - 1) * W].reshape(B, H, n - 1, W, d).transpose(1, 2)

    def keys(t, prefix):  # [B (n - 1), H, P + 2W, d]: the prefix, the previous block, the own block
        both = torch.cat([prefix[:, None].expand(B, n - 1, H, P, d), blocks(t, 0), blocks(t, W)], dim=3)
        return both.reshape(B * (n - 1), H, P + 2 * W, d)

    mask = attention_mask(W, P, W, q.device, query_offset=W, num_keys=2 * W)
    rest = F.scaled_dot_product_attention(blocks(q, W).reshape(B * (n - 1), H, W, d), keys(k, prefix_k),
                                          keys(v, prefix_v), attn_mask=mask)
    rest = rest.reshape(B, n - 1, H, W, d).transpose(1, 2).reshape(B, H, (n - 1) * W, d)
    return torch.cat([first, rest], dim=2)[:, :, :T]


def prefixed_attention(q, k, v, prefix_k=None, prefix_v=None, window: Optional[int] = None, query_offset: int = 0,
                       backend: str = "auto", aligned_k=None, aligned_v=None):
    """softmax(q k^T / sqrt(d)) v over [prefix || keys || aligned], masked as ``attention_mask`` says.

    q: [B, H, Tq, d]; k, v: [B, H, Tk, d]; prefix_k/v: [B, H, P, d] or None; aligned_k/v: [B, H, Tk, d]
    or None, a second key per position (MAC's own-query retrievals), masked like the key at its position.
    """
    num_prefix = 0 if prefix_k is None else prefix_k.shape[2]
    num_keys = k.shape[2]
    aligned = aligned_k is not None
    sdpa = resolve_backend(backend, q.device) == "sdpa"
    if sdpa and is_banded(q.shape[2], num_keys, window, query_offset, aligned):
        empty = q.new_zeros(q.shape[0], q.shape[1], 0, q.shape[3])
        return banded_attention(q, k, v, empty if prefix_k is None else prefix_k,
                                empty if prefix_v is None else prefix_v, window)
    k = torch.cat([t for t in (prefix_k, k, aligned_k) if t is not None], dim=2)
    v = torch.cat([t for t in (prefix_v, v, aligned_v) if t is not None], dim=2)
    if not sdpa:  # flex
        block_mask = _flex_block_mask(q.shape[2], num_prefix, num_keys, window, query_offset, str(q.device), aligned)
        return _flex_kernel(q.device.type == "cuda")(q, k, v, block_mask=block_mask)
    if is_plain_causal(q.shape[2], num_keys, num_prefix, window, query_offset, aligned):
        # no explicit mask: SDPA may take its flash / memory-efficient kernels (Transformer++'s path)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = attention_mask(q.shape[2], num_prefix, window, q.device, query_offset, num_keys)
    if aligned:
        mask = torch.cat([mask, mask[:, num_prefix:]], dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
