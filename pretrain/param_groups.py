"""Which parameters AdamW decays: everything except names containing any of ``optim.no_decay`` (norms,
biases, the memory's gates, ...). Shared by both optimizer paths and the benchmarks."""

from typing import List

import torch

from titans_pretrain.config import OptimSection


def no_decay(name: str, optim: OptimSection) -> bool:
    return any(s in name for s in optim.no_decay)


def parameter_groups(model: torch.nn.Module, optim: OptimSection) -> List[dict]:
    """Two groups: decayed, and not decayed (names containing any of ``optim.no_decay``)."""
    decay, exempt = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (exempt if no_decay(name, optim) else decay).append(p)
    return [{"params": decay, "weight_decay": optim.weight_decay, "name": "decay"},
            {"params": exempt, "weight_decay": 0.0, "name": "no_decay"}]
