"""RMSNorm as the model uses it: per token over the hidden dim, or per head with a vector per head."""

import torch
import torch.nn as nn

from .parallel import Sharded


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dtype) * weight


class RMSNorm(nn.Module):
    """Per-token RMSNorm over the last dim with a learnable weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype, device=device))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class HeadRMSNorm(Sharded):
    """RMSNorm of each head's d_h features, with one learnable vector per head (tensor-parallel)."""

    def __init__(self, weight: nn.Parameter, eps: float, parallel):
        super().__init__()
        self.weight = weight  # [H_local, d_h]
        self.eps = eps
        self.parallel = parallel

    def forward(self, x):  # [..., H_local, d_h] (this context-parallel rank's heads)
        return rms_norm(x, self.parallel.local_heads(self.weight, 0), self.eps)


def head_norm(config, parallel) -> HeadRMSNorm:
    H_l = config.num_attention_heads // parallel.tp_size()
    weight = parallel.parameter((H_l, config.head_dim), 0, config, nn.init.ones_)
    return HeadRMSNorm(weight, config.layernorm_epsilon, parallel)
