"""Sharded model and optimizer state through torch.distributed.checkpoint (DCP): every rank writes a
disjoint part, nothing is gathered, and a loading rank reads only the saved chunks that overlap what it
holds, at any tensor- and data-parallel size.

A *chunk* is a box of one global tensor: its key (a parameter's piece name from pretrain/resharding.py,
``NAME#exp_avg`` for a moment), the global shape, the box's offset and the data. Tensors of more than two
dimensions are stored as their 2-D view ``(d0, d1 * d2 ...)``, so that a flat range of a parameter (what
Megatron's distributed optimizer holds of it) is at most three boxes: a partial row, whole rows, a
partial row. What each rank holds is its tensor-parallel shard (model, torch AdamW moments: replicated
over data-parallel ranks) or its flat range of that shard (distributed-optimizer moments); ranks holding
the same box split its rows between them, so every rank writes about 1/world of the state.

DCP's default planners take whole tensors, DTensors or ShardedTensors; a rank's pieces here are several
uneven boxes of one tensor (SwiGLU's two halves, a flat range) that neither expresses, so two small
planners hand DCP the boxes themselves (its documented extension point).
"""

import math
import os
import pickle
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex, StorageMeta,
                                                   TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadPlan, SavePlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from titans_pretrain import resharding

FORMAT = "titans-dcp-1"
MOMENTS = ("exp_avg", "exp_avg_sq")


class ShardError(Exception):
    pass


@dataclass
class Chunk:
    key: str
    shape: Tuple[int, ...]  # the global tensor's (2-D view) shape
    offset: Tuple[int, ...]
    data: torch.Tensor  # the box, shaped like it

    @property
    def ident(self):
        return self.key, self.offset, tuple(self.data.shape)


def _view2d(name: str, shape, offset, local) -> Tuple[tuple, tuple, tuple]:
    """Global shape, offset and local shape as stored (0-d as (1,), more than 2-D as 2-D)."""
    shape, offset, local = tuple(shape), tuple(offset), tuple(local)
    if len(shape) == 0:
        return (1,), (0,), (1,)
    if len(shape) <= 2:
        return shape, offset, local
    if any(offset[1:]) or local[1:] != shape[1:]:
        raise ShardError(f"{name}: a shard split along a dimension after the first of a {len(shape)}-D tensor")
    return (shape[0], math.prod(shape[1:])), (offset[0], 0), (local[0], math.prod(local[1:]))


def _boxes(local: tuple, lo: int, hi: int) -> List[Tuple[tuple, tuple, int, int]]:
    """The flat range [lo, hi) of a row-major ``local`` (1-D or 2-D) block as boxes: (offset, shape,
    flat start, flat end), each contiguous in the flat order."""
    if len(local) == 1:
        return [((lo,), (hi - lo,), lo, hi)]
    cols = local[1]
    r0, c0 = divmod(lo, cols)
    r1, c1 = divmod(hi, cols)
    if r0 == r1:
        return [((r0, c0), (1, c1 - c0), lo, hi)]
    out = []
    if c0:
        out.append(((r0, c0), (1, cols - c0), lo, (r0 + 1) * cols))
        r0 += 1
    if r1 > r0:
        out.append(((r0, 0), (r1 - r0, cols), r0 * cols, r1 * cols))
    if c1:
        out.append(((r1, 0), (1, c1), r1 * cols, hi))
    return out


def range_chunks(key: str, placement, local: torch.Tensor, start: int, end: int,
                 flat: torch.Tensor) -> List[Chunk]:
    """The chunks of ``flat`` (elements ``start:end`` of the flattened local shard ``local`` of the
    parameter whose state-dict key is ``key``; ``flat`` may be the shard itself, or a moment): placed
    through the parameter's pieces (pretrain/resharding.py), which are contiguous views of ``local``."""
    pieces, _ = resharding.split_pieces(key, placement, local.detach())
    out = []
    for name, shape, offset, view in pieces:
        if view.numel() == 0:
            continue
        begin = view.storage_offset() - local.storage_offset()
        if not view.is_contiguous() or view.untyped_storage().data_ptr() != local.untyped_storage().data_ptr() \
                or not 0 <= begin <= local.numel() - view.numel():
            raise ShardError(f"{name}: a piece of {key} that is not a contiguous part of its shard")
        lo, hi = max(start, begin), min(end, begin + view.numel())
        if lo >= hi:
            continue
        gshape, goffset, lshape = _view2d(name, shape, offset, view.shape)
        for box_offset, box_shape, flo, fhi in _boxes(lshape, lo - begin, hi - begin):
            data = flat[flo + begin - start:fhi + begin - start].view(box_shape)
            out.append(Chunk(name, gshape, tuple(g + b for g, b in zip(goffset, box_offset)), data))
    return out


def model_chunks(model, into: Optional[Dict[str, torch.Tensor]] = None) -> List[Chunk]:
    """This rank's tensor-parallel shard of every tensor of ``model`` (parameters and buffers): views of
    the model's tensors (to save), or, given a dict ``into``, of fresh tensors put there by name (to load)."""
    placements = resharding.placements_of(model)
    out = []
    for key, value in model.state_dict(keep_vars=False).items():
        if isinstance(value, torch.Tensor):
            value = value.detach()
            target = value if into is None else into.setdefault(key, torch.empty(value.shape, dtype=value.dtype))
            out += range_chunks(key, placements.get(key), value, 0, value.numel(), target.reshape(-1))
    return out


def moment_chunks(model, slices: Dict[str, tuple]) -> List[Chunk]:
    """Chunks of the AdamW moments: ``slices`` {parameter name: (start, end, {moment: flat tensor})},
    the flat range of the local shard this rank's optimizer holds."""
    placements, params = resharding.placements_of(model), dict(model.named_parameters())
    out = []
    for name, (start, end, moments) in slices.items():
        for moment, flat in moments.items():
            for chunk in range_chunks(name, placements.get(name), params[name], start, end, flat):
                chunk.key += f"#{moment}"
                out.append(chunk)
    return out


def write_share(chunks: List[Chunk], group) -> List[Chunk]:
    """The part of ``chunks`` this rank writes: ranks holding the same box split its rows."""
    idents = [c.ident for c in chunks]
    everyone = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, idents, group=group)
    holders: Dict[tuple, List[int]] = {}
    for rank, held in enumerate(everyone):
        for ident in held:
            holders.setdefault(ident, []).append(rank)
    me = dist.get_rank(group)
    out = []
    for c in chunks:
        owners = holders[c.ident]
        k, n, rows = owners.index(me), len(owners), c.data.shape[0]
        lo, hi = rows * k // n, rows * (k + 1) // n
        if lo < hi:
            out.append(Chunk(c.key, c.shape, (c.offset[0] + lo,) + c.offset[1:], c.data[lo:hi]))
    return out


def _index(chunk: Chunk) -> MetadataIndex:
    return MetadataIndex(chunk.key, torch.Size(chunk.offset))


class _SavePlanner(DefaultSavePlanner):
    def __init__(self, chunks: List[Chunk]):
        super().__init__(flatten_state_dict=False)
        self.chunks = {(c.key, c.offset): c for c in chunks}

    def create_local_plan(self) -> SavePlan:
        items = [WriteItem(index=_index(c), type=WriteItemType.SHARD, tensor_data=TensorWriteData(
            chunk=ChunkStorageMetadata(offsets=torch.Size(c.offset), sizes=c.data.shape),
            properties=TensorProperties.create_from_tensor(c.data), size=torch.Size(c.shape)))
            for c in self.chunks.values()]
        self.plan = SavePlan(items)
        return self.plan

    def resolve_data(self, write_item: WriteItem):
        return self.chunks[(write_item.index.fqn, tuple(write_item.index.offset))].data


class _LoadPlanner(DefaultLoadPlanner):
    def __init__(self, chunks: List[Chunk], folder: str):
        super().__init__(flatten_state_dict=False)
        self.folder = folder
        self.chunks = {(c.key, c.offset): c for c in chunks}

    def create_local_plan(self) -> LoadPlan:
        # checked here: DCP hands a rank's planning error to every rank, so none waits on the others
        check(list(self.chunks.values()), self.metadata.state_dict_metadata, self.folder)
        items = []
        for c in self.chunks.values():
            items += create_read_items_for_chunk_list(c.key, self.metadata.state_dict_metadata[c.key], [
                ChunkStorageMetadata(offsets=torch.Size(c.offset), sizes=c.data.shape)])
        return LoadPlan(items)

    def load_bytes(self, read_item, value):
        raise ShardError(f"{read_item.dest_index.fqn}: the checkpoint holds pickled bytes; only tensors are read")

    def resolve_tensor(self, read_item):
        target = self.chunks[(read_item.dest_index.fqn, tuple(read_item.dest_index.offset))].data
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            target = target.narrow(dim, start, length)
        return target


class _MetadataUnpickler(pickle.Unpickler):
    """DCP pickles its ``.metadata``; this reads it allowing only the classes that file holds (the
    checkpoint's other files load with ``weights_only=True``), so a crafted checkpoint runs no code."""

    ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
               ("pathlib", "PurePosixPath"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED or module == "torch.distributed.checkpoint.metadata" or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


class _Reader(dcp.FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        with open(os.path.join(self.path, ".metadata"), "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def save(folder: str, chunks: List[Chunk], group, asynchronous: bool = False):
    """Collective over ``group`` (every rank, with the chunks it writes). Returns a future when
    ``asynchronous`` (the chunks are copied to host memory first, so training may go on), else None."""
    if asynchronous:
        chunks = [Chunk(c.key, c.shape, c.offset, c.data.to("cpu", copy=True)) for c in chunks]
        writer = dcp.FileSystemWriter(folder, thread_count=1, sync_files=True)
        return dcp.async_save({}, storage_writer=writer, planner=_SavePlanner(chunks), process_group=group)
    dcp.save({}, storage_writer=dcp.FileSystemWriter(folder, sync_files=True), planner=_SavePlanner(chunks),
             process_group=group)
    return None


def saved_tensors(folder: str) -> Dict[str, TensorStorageMetadata]:
    """The checkpoint's tensors by key (ShardError naming what is missing when it is not whole)."""
    problem = incomplete(folder)
    if problem:
        raise ShardError(problem)
    metadata = _Reader(folder).read_metadata()
    return {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def incomplete(folder: str) -> str:
    """What is missing from the sharded checkpoint in ``folder`` ('' when whole): its ``.metadata`` (written
    last, once every rank's data is), a data file it names, or bytes of one (a truncated file)."""
    if not os.path.isfile(os.path.join(folder, ".metadata")):
        return "lacks .metadata (the index of the sharded state, written last: the save did not complete)"
    try:
        metadata = _Reader(folder).read_metadata()
    except Exception as e:  # noqa: BLE001 -- a damaged pickle raises anything
        return f".metadata is unreadable ({type(e).__name__}: {e})"
    ends: Dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"lacks {name} (a shard of the saved state)"
        if os.path.getsize(path) < end:
            return f"{name} is truncated ({os.path.getsize(path)} bytes, {end} expected)"
    return ""


def check_names(needed: set, saved: dict) -> None:
    """The checkpoint's model tensors (keys without ``#``: those are moments) are exactly ``needed``, or
    the differences are named."""
    held = {k for k in saved if "#" not in k}
    missing, extra = sorted(needed - held), sorted(held - needed)
    if missing or extra:
        raise ShardError(f"the checkpoint holds other parameters than the model: {len(missing)} missing from it "
                         f"{missing[:4]}, {len(extra)} not in the model {extra[:4]}")


def check(chunks: List[Chunk], saved: dict, where: str) -> None:
    """Every chunk's key is saved with its global shape, and the saved boxes cover all of it."""
    missing = sorted({c.key for c in chunks if c.key not in saved})
    if missing:
        raise ShardError(f"{where} lacks {len(missing)} of the tensors to load: {missing[:4]}")
    for c in chunks:
        md = saved[c.key]
        if not isinstance(md, TensorStorageMetadata):
            raise ShardError(f"{c.key}: not a tensor in the checkpoint")
        if tuple(md.size) != tuple(c.shape):
            raise ShardError(f"{c.key}: the checkpoint's full shape is {tuple(md.size)}, the model's {tuple(c.shape)}")
        covered = 0
        for box in md.chunks:
            sides = [min(o + n, so + sn) - max(o, so) for o, n, so, sn
                     in zip(c.offset, c.data.shape, box.offsets, box.sizes)]
            covered += math.prod(max(s, 0) for s in sides)
        if covered != c.data.numel():
            raise ShardError(f"{c.key}: the checkpoint covers {covered} of the {c.data.numel()} elements this rank "
                             f"needs (offset {c.offset} of {c.shape}): a shard is missing")


def load(folder: str, chunks: List[Chunk], group) -> None:
    """Collective over ``group``: fill every chunk's data from the checkpoint in ``folder`` (ShardError
    on every rank, naming the tensor, when any rank's chunks are not all in it)."""
    try:
        dcp.load({}, storage_reader=_Reader(folder), planner=_LoadPlanner(chunks, folder),
                 process_group=group)
    except CheckpointException as e:
        first = next(iter(e.failures.values()))
        cause = first[0] if isinstance(first, tuple) else first
        raise ShardError(str(cause) if isinstance(cause, ShardError) else f"reading {folder} failed: {e}") from e


def read_whole(folder: str) -> Dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in full (2-D views as stored), in one process: for tools and tests."""
    saved = saved_tensors(folder)
    chunks = [Chunk(k, tuple(md.size), (0,) * len(md.size), torch.empty(tuple(md.size), dtype=md.properties.dtype))
              for k, md in saved.items()]
    load(folder, chunks, None)
    return {c.key: c.data for c in chunks}
