"""AdamW with weight decay only where it belongs, and the learning-rate schedule (a pure function of
the step, so a resumed run needs no scheduler state)."""

import math
from typing import List

import torch

from pretrain.config import OptimSection


def parameter_groups(model: torch.nn.Module, optim: OptimSection) -> List[dict]:
    """Two groups: decayed, and not decayed (names containing any of ``optim.no_decay``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if any(s in name for s in optim.no_decay) else decay).append(p)
    return [{"params": decay, "weight_decay": optim.weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: torch.nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameter_groups(model, optim), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


def learning_rate(step: int, optim: OptimSection, train_steps: int) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``train_steps``."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = min(1.0, (step - optim.warmup_steps) / max(1, train_steps - optim.warmup_steps))
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * progress))
