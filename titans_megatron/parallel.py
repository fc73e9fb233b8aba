"""Megatron parallel state for any process (join an existing setup, or make a one-rank gloo group),
and ``MixerSubmodules``: the tensor-parallel layers titans_core's mixers are built from."""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    set_tensor_model_parallel_attributes,
)
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from megatron.core.tensor_parallel.random import initialize_rng_tracker

from titans_megatron import context_parallel
from titans_megatron.sharding import tensor_parallel_sharded_state_dict


def enable_cpu_collectives() -> None:
    """Let Megatron's tensor/sequence-parallel collectives run on CPU tensors over gloo.

    Megatron allocates the buffers of its gathers and reduce-scatters (and of its global memory
    buffer) on ``torch.cuda.current_device()``. Without CUDA that call raises; answering ``"cpu"``
    instead puts those buffers on the CPU, where gloo works on them. Its RNG tracker (forked around
    dropout under sequence parallelism) keeps CUDA generator states; on CPU it becomes a pass-through,
    so dropout draws from the CPU generator. Megatron-core 0.19's gradient buffers also ask for
    ``torch.cuda.current_stream()`` to order their reductions; on CPU a stream with nothing to wait on
    stands in. Nothing changes where CUDA exists.
    """
    if not torch.cuda.is_available():
        torch.cuda.current_device = lambda: "cpu"
        torch.cuda.current_stream = lambda *args, **kwargs: _NoStream()
        initialize_rng_tracker(inference_rng_tracker=True)


class _NoStream:
    """The CPU's stand-in for a CUDA stream: work is already ordered, so waiting is a no-op."""

    def wait_event(self, event) -> None:
        pass

    def wait_stream(self, stream) -> None:
        pass


def ensure_model_parallel(tensor_model_parallel_size: int = 1, context_parallel_size: int = 1) -> None:
    """Initialise torch.distributed (gloo, one rank, when nothing is set up) and Megatron's parallel
    state. A process already set up by torchrun/SLURM keeps its own groups."""
    enable_cpu_collectives()
    if not dist.is_initialized():
        # An in-memory store: no port to pick (a race) and no MASTER_* variables left in the
        # environment for child processes to inherit and collide on.
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_model_parallel_size,
                                                 context_parallel_size=context_parallel_size)
    tp, cp = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_context_parallel_world_size()
    if (tp, cp) != (tensor_model_parallel_size, context_parallel_size):
        raise ValueError(f"Megatron's parallel state has tensor-parallel size {tp} and context-parallel size {cp}, "
                         f"the config asks for {tensor_model_parallel_size} and {context_parallel_size}")


def tp_size() -> int:
    return parallel_state.get_tensor_model_parallel_world_size()


def tp_rank() -> int:
    return parallel_state.get_tensor_model_parallel_rank()


def device_of(config) -> torch.device:
    if config.use_cpu_initialization or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def tensor_parallel_parameter(shape, dim: int, config, init=None) -> torch.nn.Parameter:
    """A per-head parameter whose dim ``dim`` is split across tensor-parallel ranks.

    ``init(full_tensor)`` fills the full (unsplit) tensor from the global RNG; every rank draws the
    same full tensor and keeps its slice, so a model has the same weights at any tensor-parallel size.
    """
    full_shape = list(shape)
    full_shape[dim] *= tp_size()
    full = torch.empty(full_shape, dtype=config.params_dtype)
    if init is not None and config.perform_initialization:
        init(full)
    local = full.chunk(tp_size(), dim=dim)[tp_rank()].contiguous().to(device_of(config))
    param = torch.nn.Parameter(local)
    set_tensor_model_parallel_attributes(param, is_parallel=True, dim=dim, stride=1)
    return param


def allreduce_sequence_parallel_grads(model: torch.nn.Module) -> None:
    """Sum, over tensor-parallel ranks, the gradients of parameters that see only this rank's
    sequence shard under sequence parallelism (the norms: marked ``sequence_parallel``). Megatron's
    ``finalize_model_grads`` does the same on its GPU path; the CPU path calls this."""
    grads = [p.grad for p in model.parameters() if getattr(p, "sequence_parallel", False) and p.grad is not None]
    if grads and tp_size() > 1:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=parallel_state.get_tensor_model_parallel_group())
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


@dataclass
class MixerSubmodules:
    """The layers a titans_core mixer builds (its ``submodules``, the interface of
    titans_core.parallel.LocalParallel), named by the spec as Megatron's own mixers take theirs (e.g.
    Transformer Engine's parallel linears in place of Megatron's): every column-parallel projection
    (q, k, v, the memory's gates, LMM's output gate), every row-parallel one (the output projection,
    MAC's projections back to hidden space), per-head parameters split across ranks, and the
    collectives."""

    column_linear: type = ColumnParallelLinear
    row_linear: type = RowParallelLinear

    def tp_size(self) -> int:
        return tp_size()

    def tp_rank(self) -> int:
        return tp_rank()

    def device(self, config) -> torch.device:
        return device_of(config)

    def column(self, config, in_size: int, out_size: int, bias: bool = False):
        return self.column_linear(in_size, out_size, config=config, init_method=config.init_method,
                                  bias=bias, gather_output=False, skip_bias_add=False)

    def row(self, config, in_size: int, out_size: int):
        return self.row_linear(in_size, out_size, config=config, init_method=config.output_layer_init_method,
                               bias=False, input_is_parallel=True, skip_bias_add=True)

    def parameter(self, shape, dim: int, config, init=None) -> torch.nn.Parameter:
        return tensor_parallel_parameter(shape, dim, config, init)

    def copy_to_tensor_parallel(self, x):
        return copy_to_tensor_model_parallel_region(x)

    def gather_sequence(self, x):
        # The inner column-parallel projections all-reduce x's gradient: the gather's backward only
        # needs to keep this rank's slice of it.
        return gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)

    def cp_size(self) -> int:
        return context_parallel.cp_size()

    def to_heads(self, *tensors):
        """[s / cp, b, n_i] -> [s, b, n_i / cp]: this context-parallel rank's heads of the whole sequence."""
        return context_parallel.to_heads(*tensors)

    def to_sequence(self, x):
        return context_parallel.to_sequence(x)

    def local_heads(self, tensor, dim: int, sections=()):
        """This context-parallel rank's heads of a per-head tensor along ``dim``."""
        return context_parallel.local_heads(tensor, dim, context_parallel.cp_size(), context_parallel.cp_rank(),
                                            sections)

    def head_linear(self, linear, x):
        """Column projection of ``x`` (held whole by every rank of the tensor x context group: MAC's
        hidden-space tokens inside its segment loop) to this rank's heads; x's gradient is summed over
        the group. The linear itself where context parallelism is off."""
        if context_parallel.cp_size() == 1:
            return linear(x)[0]
        weight = self.local_heads(linear.weight, 0)
        return F.linear(copy_to_tensor_model_parallel_region(x, group=_tensor_and_context_group()), weight)

    def row_from_heads(self, linear, y):
        """Row projection of this rank's heads back to hidden space, summed over the tensor x context
        group (MAC's projections inside its segment loop). The linear itself where context parallelism
        is off."""
        if context_parallel.cp_size() == 1:
            return linear(y)[0]
        partial = F.linear(y, self.local_heads(linear.weight, 1))
        return reduce_from_tensor_model_parallel_region(partial, group=_tensor_and_context_group())

    def sharded_state_dict(self, module, prefix="", sharded_offsets=(), metadata=None):
        return tensor_parallel_sharded_state_dict(module, prefix, sharded_offsets, metadata)


def _tensor_and_context_group():
    return parallel_state.get_tensor_and_context_parallel_group()
