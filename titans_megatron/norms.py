"""RMSNorms that work with sequence parallelism (Megatron's torch fallback refuses it)."""

import torch
import torch.nn as nn

from titans_megatron.parallel import device_of
from titans_megatron.sharding import TensorParallelSharded


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dtype) * weight


class RMSNorm(nn.Module):
    """Per-token RMSNorm over the hidden dim; the signature Megatron's specs build norms with.

    Under sequence parallelism each rank normalises its own tokens; the weight is marked
    ``sequence_parallel`` so that its gradient is all-reduced across tensor-parallel ranks
    (Megatron's finalize_model_grads does this for every such parameter).
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype, device=device_of(config)))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class HeadRMSNorm(TensorParallelSharded):
    """RMSNorm of each head's d_h features, with one learnable vector per head (tensor-parallel)."""

    def __init__(self, weight: nn.Parameter, eps: float):
        super().__init__()
        self.weight = weight  # [H_local, d_h]
        self.eps = eps

    def forward(self, x):  # [..., H_local, d_h]
        return rms_norm(x, self.weight, self.eps)
