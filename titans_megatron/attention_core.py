"""Our attention core: causal, optional sliding window, a prefix visible to every query.

Works on per-head tensors [B, H, T, d] on any device through SDPA with an explicit mask. The prefix
(persistent tokens, MAC's memory tokens) is visible to every query whatever the window; queries see
themselves and earlier tokens no further back than ``window`` (None: full causal).
"""

from typing import Optional

import torch
import torch.nn.functional as F


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


def prefixed_attention(q, k, v, prefix_k=None, prefix_v=None, window: Optional[int] = None, query_offset: int = 0):
    """softmax(q k^T / sqrt(d)) v over [prefix || keys], masked as ``attention_mask`` says.

    q: [B, H, Tq, d]; k, v: [B, H, Tk, d]; prefix_k/v: [B, H, P, d] or None.
    """
    num_prefix = 0 if prefix_k is None else prefix_k.shape[2]
    if num_prefix:
        k = torch.cat([prefix_k, k], dim=2)
        v = torch.cat([prefix_v, v], dim=2)
    mask = attention_mask(q.shape[2], num_prefix, window, q.device, query_offset, k.shape[2] - num_prefix)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
