"""A per-chunk step budget on the learning rate: strong writes for distinct keys, bounded ones for
repeated keys (docs/memory_op.md, "The step budget").

Inside a chunk every gradient is taken at the chunk-start weights, so C tokens with one key apply C
steps along one direction at once, and the chunk's step along key k_t is the curvature
sum_j theta_j (k_t . k_j)^2 (unit keys; times 2 for the squared loss). A cap on theta that is safe for
that worst case (1/C) starves distinct keys, which barely interfere. The budget instead spends, token by
token in chunk order, at most ``budget`` of step along each token's key:

    theta'_t = min(theta_t, max(0, budget - sum_{i < t, same chunk} theta'_i (k_t . k_i)^2))

A key seen earlier in the chunk has used its budget (one key through a whole chunk gets ``budget`` in
total: at 1/2 the exact write of the squared loss); a key orthogonal to the chunk's earlier keys keeps
its theta. Causal: theta'_t depends on tokens up to t only, and chunks start where the op's chunks start
(a streamed call starts at a chunk boundary), so every backend and the streaming path see the same rates.
"""

import torch
import torch.nn.functional as F


def chunk_step_budget(lr: torch.Tensor, k: torch.Tensor, chunk_size: int, budget: float) -> torch.Tensor:
    """``lr`` [B, T, H] and unit keys ``k`` [B, T, H, d] -> the budgeted rates [B, T, H]."""
    B, T, H = lr.shape
    pad = (-T) % chunk_size
    keys = F.pad(k, (0, 0, 0, 0, 0, pad)).reshape(B, -1, chunk_size, H, k.shape[-1])
    rates = F.pad(lr, (0, 0, 0, pad)).reshape(B, -1, chunk_size, H)
    overlap = torch.einsum("bnthd,bnshd->bnths", keys, keys).square()      # [B, N, C, H, C]
    spent = rates[:, :, :1].minimum(rates.new_tensor(budget)).clamp_min(0.0)  # theta'_0, [B, N, 1, H]
    for t in range(1, chunk_size):  # sequential in t: each rate depends on the ones before it
        used = torch.einsum("bnhi,bnih->bnh", overlap[:, :, t, :, :t], spent)
        spent = torch.cat([spent, torch.minimum(rates[:, :, t], (budget - used).clamp_min(0.0))[:, :, None]], dim=2)
    return spent.reshape(B, -1, H)[:, :T]
