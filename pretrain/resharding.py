"""Checkpoint contents that do not depend on the tensor-parallel size, so a checkpoint saved at one size
loads at another (2 -> 1 for evaluation, 1 -> 2 to continue training, any N -> M).

Each tensor-parallel rank writes its *pieces*: ``(name, global_shape, global_offset, tensor)``, where the
global shape and offset come from the model's ``sharded_state_dict`` (the Megatron-core metadata that
``dist_checkpointing`` uses: ShardedTensors, and ShardedTensorFactories such as SwiGLU's, whose two
halves are placed separately). A loading rank builds the pieces it needs from its own
``sharded_state_dict`` and copies each from the saved pieces that overlap it, checking that every element
is covered. AdamW's moments have their parameter's shape and are split the same way.

Megatron's ``dist_checkpointing.save/load`` would do this, but its strategies stall under gloo on CPU
(docs/training.md), and one format must serve CPU and GPU runs, so the copy is done here.
"""

import dataclasses
from typing import Dict, List, Tuple

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from titans_pretrain import moments as moments_

FORMAT = "titans-tp-pieces-1"

Piece = Tuple[str, Tuple[int, ...], Tuple[int, ...], torch.Tensor]  # name, global shape, global offset, data


class ReshardError(Exception):
    pass


def placements_of(model) -> Dict[str, object]:
    """state-dict key -> its ShardedTensor or ShardedTensorFactory (None: replicated as a whole)."""
    sharded = model.sharded_state_dict()
    return {k: v if isinstance(v, (ShardedTensor, ShardedTensorFactory)) else None for k, v in sharded.items()}


def _leaves(tree) -> List[ShardedTensor]:
    if isinstance(tree, ShardedTensor):
        return [tree]
    values = tree.values() if isinstance(tree, dict) else tree
    return [leaf for value in values for leaf in _leaves(value)]


def _replace_leaves(tree, tensors: List[torch.Tensor]):
    if isinstance(tree, ShardedTensor):
        return tensors.pop(0)
    if isinstance(tree, dict):
        return {k: _replace_leaves(v, tensors) for k, v in tree.items()}
    return type(tree)(_replace_leaves(v, tensors) for v in tree)


def split_pieces(name: str, placement, tensor: torch.Tensor):
    """The pieces of this rank's ``tensor`` and the sub-state-dict a factory merges them back from."""
    if placement is None:
        return [(name, tuple(tensor.shape), (0,) * tensor.dim(), tensor)], None
    if isinstance(placement, ShardedTensorFactory):
        tree = dataclasses.replace(placement, data=tensor).build()
    else:
        tree = dataclasses.replace(placement, data=tensor)
    pieces = []
    for sh in _leaves(tree):
        if sh.flattened_range is not None:
            raise ReshardError(f"{name}: flattened (distributed-optimizer) shards are not supported here")
        p = sh.prepend_axis_num  # leading axes stacking layers: the state-dict key already names the layer
        # a factory may name its parts (SwiGLU's _w/_v when singleton); the plain case keeps the key
        part = sh.key[len(placement.key):] if sh.key.startswith(placement.key) else "/" + sh.key
        pieces.append((name + part, tuple(sh.global_shape[p:]), tuple(sh.global_offset[p:]), sh.data))
    return pieces, tree


def _merge(placement, tree, tensors: List[torch.Tensor]) -> torch.Tensor:
    if tree is None or not isinstance(placement, ShardedTensorFactory):
        return tensors[0]
    return placement.merge_fn(_replace_leaves(tree, list(tensors)))


def _fill(name: str, shape, offset, target: torch.Tensor, saved: Dict[str, list]) -> None:
    """Copy into ``target`` (this rank's block at ``offset`` of a ``shape`` tensor) every overlapping
    saved piece; every element must be covered."""
    covered = torch.zeros(target.shape, dtype=torch.bool)
    for saved_shape, saved_offset, data in saved.get(name, []):
        if tuple(saved_shape) != tuple(shape):
            raise ReshardError(f"{name}: the checkpoint's full shape is {tuple(saved_shape)}, the model's "
                               f"{tuple(shape)}")
        src, dst = [], []
        for o_t, n_t, o_s, n_s in zip(offset, target.shape, saved_offset, data.shape):
            lo, hi = max(o_t, o_s), min(o_t + n_t, o_s + n_s)
            if lo >= hi:
                break
            src.append(slice(lo - o_s, hi - o_s))
            dst.append(slice(lo - o_t, hi - o_t))
        else:
            target[tuple(dst)] = data[tuple(src)].to(target.dtype)
            covered[tuple(dst)] = True
    if not bool(covered.all()):
        raise ReshardError(f"{name}: the checkpoint covers {int(covered.sum())} of the {covered.numel()} elements "
                           f"this rank needs (offset {tuple(offset)} of {tuple(shape)})")


def _index(files: List[dict]) -> Dict[str, list]:
    saved: Dict[str, list] = {}
    for f in files:
        if f.get("format") != FORMAT:
            raise ReshardError(f"unknown checkpoint format {f.get('format')!r}; expected {FORMAT!r}")
        for name, shape, offset, data in f["pieces"]:
            saved.setdefault(name, []).append((shape, offset, data))
    return saved


def _gather_local(name: str, placement, like: torch.Tensor, saved: Dict[str, list]) -> torch.Tensor:
    pieces, tree = split_pieces(name, placement, like)
    blocks = []
    for piece_name, shape, offset, data in pieces:
        block = torch.empty(data.shape, dtype=data.dtype)  # on the CPU: load_state_dict moves it
        _fill(piece_name, shape, offset, block, saved)
        blocks.append(block)
    return _merge(placement, tree, blocks)


def model_pieces(model) -> dict:
    placements = placements_of(model)
    pieces, extra = [], {}
    for key, value in model.state_dict(keep_vars=False).items():
        if isinstance(value, torch.Tensor):
            pieces += split_pieces(key, placements.get(key), value.detach().cpu())[0]
        else:
            extra[key] = value  # Transformer Engine's _extra_state and the like: kept per rank
    return {"format": FORMAT, "pieces": pieces, "extra": extra}


def _check_names(placements: Dict[str, object], state: dict, saved: Dict[str, list]) -> None:
    """The checkpoint holds exactly the model's tensors (by piece name), or the differences are named."""
    needed = {name for key, value in state.items() if isinstance(value, torch.Tensor)
              for name, *_ in split_pieces(key, placements.get(key), value)[0]}
    missing, extra = sorted(needed - set(saved)), sorted(set(saved) - needed)
    if missing or extra:
        raise ReshardError(f"the checkpoint holds other parameters than the model: {len(missing)} missing from it "
                           f"{missing[:4]}, {len(extra)} not in the model {extra[:4]}")


def load_model(model, files: List[dict]) -> None:
    """Fill ``model`` (this rank's shards) from the pieces of every saved tensor-parallel rank."""
    placements, saved = placements_of(model), _index(files)
    state = model.state_dict()
    _check_names(placements, state, saved)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            state[key] = _gather_local(key, placements.get(key), value, saved)
    model.load_state_dict(state)


def optimizer_pieces(model, optimizer) -> dict:
    """AdamW state by parameter name: moments split like their parameter, scalars (step) whole."""
    placements, names = placements_of(model), {p: n for n, p in model.named_parameters()}
    pieces, moments, scalars = [], {}, {}
    for p, state in optimizer.state.items():
        name = names[p]
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape == p.shape:
                pieces += split_pieces(f"{name}#{key}", placements.get(name), value.detach().cpu())[0]
                moments.setdefault(name, []).append(key)
            else:
                scalars.setdefault(name, {})[key] = value
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
              for g in optimizer.param_groups]
    return {"format": FORMAT, "pieces": pieces, "moments": moments, "scalars": scalars, "groups": groups}


def load_optimizer(model, optimizer, files: List[dict]) -> None:
    placements, saved = placements_of(model), _index(files)
    names = {p: n for n, p in model.named_parameters()}
    saved_groups = files[0]["groups"]
    try:
        moments_.check_groups(model, optimizer, saved_groups)
    except moments_.MomentError as e:
        raise ReshardError(str(e)) from e
    scalars, moments = {}, {}
    for f in files:  # every rank holds them for its parameters; the values agree
        for name, values in f["scalars"].items():
            scalars.setdefault(name, values)
        for name, keys in f["moments"].items():
            moments.setdefault(name, keys)
    state, groups, index = {}, [], 0
    for saved_group, group in zip(saved_groups, optimizer.param_groups):
        current = [names[p] for p in group["params"]]
        groups.append({**saved_group, "params": list(range(index, index + len(current)))})
        for p, name in zip(group["params"], current):
            entry = dict(scalars.get(name, {}))
            for key in moments.get(name, []):
                entry[key] = _gather_local(f"{name}#{key}", placements.get(name), torch.empty(p.shape, dtype=p.dtype),
                                           saved)
            if entry:
                state[index] = entry
            index += 1
    optimizer.load_state_dict({"state": state, "param_groups": groups})
