"""Per-chunk coefficient matrices of the momentum + forgetting recurrence (TITANS_SPEC section 1).

With ``a = theta``, ``m = eta``, ``f = 1 - alpha`` and local index t = 1..n inside one chunk:

    Df[t, i] = prod_{r=i+1..t} f_r   Dm[i, j] = prod_{r=j+1..i} m_r     (lower-triangular, diag 1)
    beta_t   = prod_{r<=t} f_r       M_t = prod_{r<=t} m_r
    phi_t    = sum_{i<=t} Df[t, i] M_i          = (Df @ M)_t
    G[t, j]  = sum_{i=j..t} Df[t, i] Dm[i, j] a_j = (Df @ Dm)[t, j] a_j
    n_{j,t}  = a_j Dm[t, j]

Every entry is a product of gates in [0, 1] built with a cumulative product over a masked matrix, never
a ratio of running products: no overflow, no division by zero, and eta = 0 or alpha = 1 stay exact.
"""

from typing import NamedTuple

import torch


class ChunkCoefficients(NamedTuple):
    G: torch.Tensor      # [..., n, n] query-side coefficient of each key's gradient
    beta: torch.Tensor   # [..., n]    decay of the chunk-start weights
    phi: torch.Tensor    # [..., n]    weight of the chunk-start momentum
    M: torch.Tensor      # [..., n]    decay of the chunk-start momentum
    Dm: torch.Tensor     # [..., n, n] momentum products, for the end-of-chunk momentum
    lr: torch.Tensor     # [..., n]


def segment_products(x: torch.Tensor) -> torch.Tensor:
    """``D[..., t, i] = prod_{r=i+1..t} x_r`` for ``i <= t`` (so ``D[t, t] = 1``), 0 above the diagonal."""
    n = x.shape[-1]
    later = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(-1)  # r > i
    factors = torch.where(later, x.unsqueeze(-1), torch.ones((), dtype=x.dtype, device=x.device))
    return torch.cumprod(factors, dim=-2).tril()


def chunk_coefficients(lr: torch.Tensor, momentum: torch.Tensor, forget: torch.Tensor) -> ChunkCoefficients:
    """Coefficients for chunks laid out on the last dim: gates ``[..., n]``."""
    f = 1.0 - forget
    Df = segment_products(f)
    Dm = segment_products(momentum)
    M = torch.cumprod(momentum, dim=-1)
    G = (Df @ Dm) * lr.unsqueeze(-2)
    phi = (Df @ M.unsqueeze(-1)).squeeze(-1)
    return ChunkCoefficients(G=G, beta=torch.cumprod(f, dim=-1), phi=phi, M=M, Dm=Dm, lr=lr)
