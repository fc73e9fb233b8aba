"""``sharded_state_dict`` for our modules: tensor-parallel parameters are read off their attributes.

Megatron treats the parameters of a module without its own ``sharded_state_dict`` as replicated. Our
per-head parameters carry ``tensor_model_parallel`` and ``partition_dim`` (set by
``tensor_parallel_parameter``); this turns them into ShardedTensors split along that dim, so a
checkpoint saved at one tensor-parallel size loads at another.
"""

import torch.nn as nn
from megatron.core import parallel_state
from megatron.core.transformer.utils import (
    ensure_metadata_has_dp_cp_group,
    make_sharded_tensors_for_checkpoint,
    sharded_state_dict_default,
)


def tensor_parallel_sharded_state_dict(module: nn.Module, prefix="", sharded_offsets=(), metadata=None):
    metadata = ensure_metadata_has_dp_cp_group(metadata)
    own = {}
    module._save_to_state_dict(own, "", keep_vars=True)
    axis_map = {name: p.partition_dim for name, p in module.named_parameters(recurse=False)
                if getattr(p, "tensor_model_parallel", False)}
    sharded = make_sharded_tensors_for_checkpoint(
        own, prefix, axis_map, sharded_offsets,
        tp_group=parallel_state.get_tensor_model_parallel_group(), dp_cp_group=metadata["dp_cp_group"])
    for name, child in module.named_children():
        sharded.update(sharded_state_dict_default(child, f"{prefix}{name}.", sharded_offsets, metadata))
    return sharded
