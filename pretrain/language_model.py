"""The language model as training sees it, shared by pretrain, eval_suite and bench: built from its
config, bf16 autocast, the next-token loss, and the validation loss."""

from typing import Optional

import torch

from titans_pretrain.config import ConfigError
from titans_pretrain.data import ShardStream


def autocast(precision: str, device: torch.device):
    """bf16 autocast (run.precision bf16, or auto on CUDA); weights and optimizer state stay fp32."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def check_training_precision(precision: str, device: torch.device) -> None:
    """bf16 training needs CUDA: Megatron-core's linears replay the forward's autocast in their backward
    (custom_bwd) for CUDA only, so on CPU their backward would meet bf16 gradients with fp32 weights."""
    if precision == "bf16" and device.type != "cuda":
        raise ConfigError(f"run.precision bf16 trains on CUDA only (this process has device {device.type}); "
                          "use fp32 or auto (fp32 on CPU)")


def language_model_loss(model, batch, precision: str = "fp32") -> torch.Tensor:
    """Mean next-token cross-entropy over the unmasked targets of a batch (on the model's device).

    Under context parallelism each rank feeds its contiguous part of the sequence and returns cp x its
    part's share of the whole batch's sum over the mask: the mean over the context-parallel ranks (which
    the gradient and loss reductions take) is the whole batch's mean."""
    device = next(model.parameters()).device
    tokens = batch["tokens"].to(device, non_blocking=True)
    inputs, labels, mask = tokens[:, :-1], tokens[:, 1:], batch["loss_mask"].to(device)
    from titans_megatron import context_parallel  # here: importing this module stays Megatron-free

    cp, rank = context_parallel.size_and_rank()
    total = mask.sum().clamp_min(1.0)
    if cp > 1:
        inputs, labels, mask = (t.chunk(cp, dim=1)[rank] for t in (inputs, labels, mask))
    with autocast(precision, device):
        losses = model(inputs, labels=labels)  # fp32, vocab-parallel: no gathered logits
    return (losses * mask).sum() * cp / total


@torch.no_grad()
def validation_loss(model, data_dir: str, micro_batch: int, seed: int, seq_length: int, batches: Optional[int],
                    precision: str = "fp32") -> float:
    """Mean loss over the first ``batches`` batches of the val split (the same batches every time;
    None: one pass over the whole split)."""
    stream = ShardStream(data_dir, "val", 0, 1, micro_batch, seed, seq_length)
    if batches is None:
        batches = max(1, sum(s.samples for s in stream.shards) // micro_batch)
    model.eval()
    losses = torch.stack([language_model_loss(model, batch, precision).double() for batch, _ in zip(stream, range(batches))])
    model.train()
    from titans_megatron import context_parallel

    cp, _ = context_parallel.size_and_rank()
    if cp > 1:  # each rank scored its part of every sequence
        torch.distributed.all_reduce(losses, group=context_parallel.cp_group())
        losses /= cp
    return float(losses.mean())
