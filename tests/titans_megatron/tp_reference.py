"""The forward+backward both the tensor-parallel workers and the single-rank reference run."""

import torch
import torch.distributed as dist

from titans_megatron import build_model
from titans_megatron.parallel import allreduce_sequence_parallel_grads
from tests.titans_megatron.model_configs import small_config


def forward_backward(variant, tensor_model_parallel_size=1, sequence_parallel=False):
    config = small_config(variant, tensor_model_parallel_size=tensor_model_parallel_size,
                          sequence_parallel=sequence_parallel)
    model = build_model(config, seed=3)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (2, config.seq_length), generator=g)
    logits = model(ids)
    probe = torch.randn(logits.shape, generator=g)
    (logits * probe).sum().backward()
    allreduce_sequence_parallel_grads(model)
    return model, logits


def _shards(value):
    """The ShardedTensors of a sharded-state-dict entry: factories (SwiGLU's fc1, Gated DeltaNet's
    in_proj and conv split into query/key/value/...) built into theirs."""
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    if isinstance(value, ShardedTensorFactory):
        value = value.build()
    if isinstance(value, ShardedTensor):
        return [value]
    if isinstance(value, dict):
        value = value.values()
    return [sh for v in value for sh in _shards(v)] if isinstance(value, (list, tuple, type({}.values()))) else []


def assembled(sharded_state_dict):
    """Full tensors rebuilt from every rank's ShardedTensors, each placed at its global offset: what a
    checkpoint written at this tensor-parallel size holds (layers stacked on a leading axis)."""
    local = []
    for value in sharded_state_dict.values():
        for sh in _shards(value):  # sh.key is the checkpoint's key (layers stacked)
            data = sh.data.detach().reshape((1,) * sh.prepend_axis_num + tuple(sh.data.shape))
            local.append((sh.key, sh.global_shape, sh.global_offset, data.clone()))
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    full = {}
    for pieces in everyone:
        for key, shape, offset, data in pieces:
            target = full.setdefault(key, torch.full(shape, float("nan"), dtype=data.dtype))
            target[tuple(slice(o, o + n) for o, n in zip(offset, data.shape))] = data
    return full


def assembled_grads(model):
    """The gradients as full tensors, placed like the weights in a checkpoint (``assembled``), so that
    shards split into named parts (query/key/value/...) compare with the one-rank model's."""
    weights = {}
    for p in model.parameters():
        weights[p] = p.data
        p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    try:
        return assembled(model.gpt.sharded_state_dict())
    finally:
        for p, data in weights.items():
            p.data = data


def assert_equal_fp32(actual, expected, what):
    """Equal up to fp32 rounding of a different summation order: max error <= 1e-4 of the largest entry
    (gate gradients sum over every token of a recurrence: ~2e-5 seen)."""
    assert actual.shape == expected.shape, what
    scale = max(expected.abs().max().item(), 1e-6)
    err = (actual - expected).abs().max().item()
    assert err <= 1e-4 * scale, f"{what}: max error {err:.3g} against max |value| {scale:.3g}"
