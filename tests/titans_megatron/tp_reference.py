"""The forward+backward both the tensor-parallel workers and the single-rank reference run."""

import torch

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
