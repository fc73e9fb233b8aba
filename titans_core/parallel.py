"""The parallel layers the mixers are built from, for one process without Megatron.

A mixer takes its linears, per-head parameters and collectives from one object (its ``submodules``):
``LocalParallel`` here (plain linears, identity collectives: the Hugging Face model), or
titans_megatron.parallel.MixerSubmodules (Megatron-core's tensor-parallel linears and collectives).
Both draw every weight whole from the global RNG, so one seed gives one model.
"""

import torch
import torch.nn as nn


class LocalLinear(nn.Linear):
    """nn.Linear answering like Megatron's parallel linears: ``(output, bias)`` with the bias added."""

    def forward(self, x):
        return super().forward(x), None


class LocalParallel:
    """One rank: no tensor or sequence parallelism."""

    def tp_size(self) -> int:
        return 1

    def tp_rank(self) -> int:
        return 0

    def device(self, config):
        return None  # torch's default device (the meta device while transformers builds a model)

    def column(self, config, in_size: int, out_size: int, bias: bool = False):
        return self._linear(in_size, out_size, bias, config.init_method, config)

    def row(self, config, in_size: int, out_size: int):
        return self._linear(in_size, out_size, False, config.output_layer_init_method, config)

    def _linear(self, in_size, out_size, bias, init, config):
        linear = LocalLinear(in_size, out_size, bias=bias, dtype=config.params_dtype)
        if config.perform_initialization:
            with torch.no_grad():
                init(linear.weight)
                if bias:
                    linear.bias.zero_()
        return linear

    def parameter(self, shape, dim: int, config, init=None) -> nn.Parameter:
        """A per-head parameter (the whole of it: one rank holds every head)."""
        tensor = torch.empty(shape, dtype=config.params_dtype)
        if init is not None and config.perform_initialization:
            with torch.no_grad():
                init(tensor)
        return nn.Parameter(tensor)

    def copy_to_tensor_parallel(self, x):
        return x

    def gather_sequence(self, x):
        return x

    # Context parallelism (titans_megatron/context_parallel.py): one rank holds the whole sequence.
    def cp_size(self) -> int:
        return 1

    def to_heads(self, *tensors):
        return list(tensors)

    def to_sequence(self, x):
        return x

    def local_heads(self, tensor, dim: int, sections=()):
        return tensor

    def head_linear(self, linear, x):
        """A column projection of an input every rank holds whole, to this rank's heads."""
        return linear(x)[0]

    def row_from_heads(self, linear, y):
        """A row projection of this rank's heads back to hidden space, summed over the ranks."""
        return linear(y)[0]

    def sharded_state_dict(self, module, prefix="", sharded_offsets=(), metadata=None):
        raise TypeError("sharded_state_dict is Megatron-core's checkpoint format: build the module with "
                        "titans_megatron's MixerSubmodules")


class Sharded(nn.Module):
    """A module with tensor-parallel parameters: its checkpoint metadata comes from its ``parallel``."""

    parallel = None

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        return self.parallel.sharded_state_dict(self, prefix, sharded_offsets, metadata)
