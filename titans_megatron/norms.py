"""RMSNorms with the signature Megatron's specs build norms with, working with sequence parallelism
(Megatron's torch fallback refuses it). The arithmetic is titans_core.norms.rms_norm."""

import torch
import torch.nn as nn
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from titans_core.norms import rms_norm
from titans_megatron.parallel import device_of


class RMSNorm(nn.Module):
    """Per-token RMSNorm over the hidden dim.

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


class HeadSharedRMSNorm(nn.Module):
    """RMSNorm of each head's features with one weight shared by all heads, while the heads are split
    across tensor-parallel ranks (Gated DeltaNet's output norm). Each rank's gradient covers only its
    heads: the weight enters through Megatron's copy-to-region, whose backward sums it over the ranks.
    (Megatron's own GDN spec leaves this weight's gradient per rank without sequence parallelism.)"""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype, device=device_of(config)))

    def forward(self, x):
        return rms_norm(x, copy_to_tensor_model_parallel_region(self.weight), self.eps)
