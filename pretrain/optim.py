"""The optimizer path the training loop drives (AdamW; which parameters decay: pretrain/param_groups.py;
the learning rate: pretrain/schedule.py).

Two paths with one interface (``optim.implementation``): torch's AdamW over gradients averaged here
(``TorchAdamW``; CPU, or any device), and Megatron-core's DDP and (distributed) optimizer
(``titans_pretrain.megatron_optim.MegatronAdamW``; the GPU default). The loop calls, per step:
``set_lr``, ``zero_grad``, a ``micro_batch(last)`` context around each forward/backward,
``reduce_gradients`` (returns the global gradient norm; the loop skips non-finite steps on it) and
``step(norm)`` (clips to ``optim.grad_clip``, updates). ``model`` is what the forward runs on,
``module`` the bare model (state dicts, evaluation), ``checkpoint_state`` what pretrain/resharding.py
saves and loads: torch's optimizer, or a view with its ``state`` / ``param_groups`` / ``load_state_dict``,
so both paths write and read one checkpoint format.
"""

import contextlib

import torch

from titans_pretrain import distributed as dist_
from titans_pretrain.config import OptimSection
from titans_pretrain.param_groups import parameter_groups


def implementation(optim: OptimSection, device: torch.device) -> str:
    """``auto``: Megatron-core on CUDA, torch elsewhere."""
    if optim.implementation != "auto":
        return optim.implementation
    return "megatron" if device.type == "cuda" else "torch"


def build(model: torch.nn.Module, model_config, optim: OptimSection, layout):
    """The optimizer path ``optim.implementation`` names, over ``model`` (already on its device)."""
    if implementation(optim, layout.device) == "megatron":
        from titans_pretrain.megatron_optim import MegatronAdamW

        return MegatronAdamW(model, model_config, optim)
    return TorchAdamW(model, optim, layout, model_config.sequence_parallel)


class TorchAdamW:
    """torch.optim.AdamW; gradients averaged over data-parallel ranks in one flat all-reduce per step
    (after all micro-batches), sequence-parallel gradients summed over the tensor-parallel group."""

    def __init__(self, model, optim: OptimSection, layout, sequence_parallel: bool):
        self.model = self.module = model
        self.optim, self.layout, self.sequence_parallel = optim, layout, sequence_parallel
        self.optimizer = self.checkpoint_state = torch.optim.AdamW(
            parameter_groups(model, optim), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def micro_batch(self, last: bool):
        return contextlib.nullcontext()

    def reduce_gradients(self) -> float:
        from titans_megatron.parallel import allreduce_sequence_parallel_grads

        if self.sequence_parallel:
            allreduce_sequence_parallel_grads(self.model)
        dist_.average_gradients(self.model, self.layout)
        return dist_.gradient_norm(self.model, self.layout)

    def step(self, grad_norm: float) -> None:
        dist_.clip_gradients(self.model, self.optim.grad_clip, grad_norm)
        self.optimizer.step()
