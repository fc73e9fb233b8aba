"""The forward+backward of the context-parallel workers and of their one-rank reference: the same
model (4 heads, so that TP 2 x CP 2 gives each rank one), ids and probe."""

import torch
import torch.distributed as dist

from titans_megatron import build_model
from tests.titans_megatron.model_configs import small_config

HEADS = 4


def heads(variant):
    """4 heads (Gated DeltaNet: 4 key and 4 value heads)."""
    if variant == "gdn":
        return {"linear_num_key_heads": HEADS, "linear_num_value_heads": HEADS}
    return {"num_attention_heads": HEADS}


def inputs(config):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (2, config.seq_length), generator=g)
    probe = torch.randn(2, config.seq_length, config.vocab_size, generator=g)
    return ids, probe


def reference(variant):
    model = build_model(small_config(variant, **heads(variant)), seed=3)
    ids, probe = inputs(model.config)
    logits = model(ids)
    (logits * probe).sum().backward()
    return model, logits


def cp_forward_backward(variant, tensor, context, sequence_parallel=False):
    from megatron.core import parallel_state

    from titans_megatron.context_parallel import cp_rank, split_sequence
    from titans_megatron.parallel import allreduce_sequence_parallel_grads

    config = small_config(variant, **heads(variant), tensor_model_parallel_size=tensor,
                          context_parallel_size=context, sequence_parallel=sequence_parallel)
    model = build_model(config, seed=3)
    ids, probe = inputs(config)
    rank = cp_rank()
    logits = model(split_sequence(ids, 1, context, rank))
    (logits * split_sequence(probe, 1, context, rank)).sum().backward()
    allreduce_sequence_parallel_grads(model)
    group = parallel_state.get_context_parallel_group()
    for p in model.parameters():  # replicated over the group: each rank's share of the gradient summed
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
    every = [torch.empty_like(logits) for _ in range(context)]
    dist.all_gather(every, logits.detach().contiguous(), group=group)
    return model, torch.cat(every, dim=1)
