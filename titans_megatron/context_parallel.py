"""Context parallelism's layouts: the sequence split across the ranks of a context-parallel group, and
the all-to-all that turns sequence shards into head shards and back (Megatron-core's GDN context
parallelism, its ``a2a_cp_to_hp`` / ``a2a_hp_to_cp``, over megatron.core's autograd ``all_to_all``).

    to_heads:    [s / cp, b, n] on each rank  ->  [s, b, n / cp]  (rank r: the r-th n / cp of the last dim)
    to_sequence: the inverse

Fused projections are head-major (titans_core.branches), so the r-th contiguous n / cp of their last dim
is whole heads: rank r runs the memory, the window attention and the segment loop for heads
[r H / cp, (r + 1) H / cp) over the whole sequence. Several tensors travel in one all-to-all; each is
split on its own (``to_heads(a, b)`` gives rank r its heads of a and of b).

The sequence is split into contiguous chunks, rank r holding positions [r s / cp, (r + 1) s / cp).
Megatron splits it zig-zag (2 cp chunks, rank r holding chunks r and 2 cp - 1 - r) to balance its ring
attention's causal work, and undoes that order around its GDN all-to-all; here every mixer runs on
whole sequences per head after the all-to-all, and the layers outside it cost the same per token, so
contiguous chunks balance the work and need no reordering.
"""

from typing import List, Sequence

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import all_to_all


def cp_group():
    return parallel_state.get_context_parallel_group()


def cp_size() -> int:
    return parallel_state.get_context_parallel_world_size()


def cp_rank() -> int:
    return parallel_state.get_context_parallel_rank()


def size_and_rank():
    """(size, rank) of this process's context-parallel group; (1, 0) where no model parallelism is set up
    (one process, evaluation, the Hugging Face model)."""
    if not parallel_state.model_parallel_is_initialized():
        return 1, 0
    return cp_size(), cp_rank()


def split_sequence(x: torch.Tensor, dim: int, size: int, rank: int) -> torch.Tensor:
    """This rank's contiguous chunk of ``x`` along ``dim`` (a multiple of ``size`` long)."""
    if x.shape[dim] % size:
        raise ValueError(f"a sequence of {x.shape[dim]} positions does not split into {size} equal chunks")
    return x.chunk(size, dim=dim)[rank]


def to_heads(*tensors: torch.Tensor, group=None) -> List[torch.Tensor]:
    """[s / cp, b, n_i] per tensor -> [s, b, n_i / cp]: one all-to-all over the context-parallel group."""
    group = group or cp_group()
    cp = group.size()
    if cp == 1:
        return list(tensors)
    s, b = tensors[0].shape[:2]
    widths = [t.shape[-1] // cp for t in tensors]
    for t in tensors:
        if t.shape[:2] != (s, b) or t.shape[-1] % cp:
            raise ValueError(f"to_heads: {list(t.shape)} is not [{s}, {b}, a multiple of {cp}]")
    # [s, b, cp, sum n_i / cp] -> [cp, s, b, .]: block j of dim 0 goes to rank j
    packed = torch.cat([t.reshape(s, b, cp, w) for t, w in zip(tensors, widths)], dim=-1)
    received = all_to_all(group, packed.permute(2, 0, 1, 3).reshape(cp * s, b, -1))
    return list(received.split(widths, dim=-1))  # block j of dim 0: rank j's positions, in order


def to_sequence(x: torch.Tensor, group=None) -> torch.Tensor:
    """[s, b, m] (this rank's heads) -> [s / cp, b, cp m] (every head of this rank's positions)."""
    group = group or cp_group()
    cp = group.size()
    if cp == 1:
        return x
    s, b, m = x.shape
    received = all_to_all(group, x.contiguous())  # block j of dim 0: rank j's heads of my positions
    return received.reshape(cp, s // cp, b, m).permute(1, 2, 0, 3).reshape(s // cp, b, cp * m)


def local_heads(param: torch.Tensor, dim: int, size: int, rank: int, sections: Sequence[int] = ()) -> torch.Tensor:
    """This rank's heads of a per-head parameter (replicated across the group): its r-th ``1 / size`` of
    ``dim``, or of each of ``sections`` laid end to end along it. The slice is taken in the forward, so
    the gradient reaches the whole parameter (zero outside the slice; the group's reduction sums them)."""
    if size == 1:
        return param
    parts = param.split(list(sections), dim=dim) if sections else [param]
    return torch.cat([p.chunk(size, dim=dim)[rank] for p in parts], dim=dim)
