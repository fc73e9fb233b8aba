"""AdamW's state as a checkpoint sees it, on both optimizer paths: per parameter, the flat range of its
local (tensor-parallel) shard this rank's optimizer holds and the moments over that range; the step count;
the parameter groups by name.

``optimizer`` is a torch optimizer (torch's path, tests: it holds whole shards) or an object with
``moment_ranges`` / ``moment_slices`` / ``load_moments`` / ``step_count`` (Megatron's path,
pretrain/megatron_optim.py: the distributed optimizer holds a flat range of each shard).
"""

from typing import Dict, Optional, Tuple

import torch

MOMENTS = ("exp_avg", "exp_avg_sq")


class MomentError(Exception):
    pass


def _names(model) -> Dict[torch.nn.Parameter, str]:
    return {p: n for n, p in model.named_parameters()}


def ranges(model, optimizer) -> Dict[str, Tuple[int, int]]:
    """{parameter name: (start, end)} of the flat local shard whose moments this rank holds."""
    if hasattr(optimizer, "moment_ranges"):
        return optimizer.moment_ranges()
    return {n: (0, p.numel()) for group in optimizer.param_groups for p in group["params"]
            for n in [_names(model)[p]]}


def slices(model, optimizer) -> Dict[str, tuple]:
    """{parameter name: (start, end, {moment: flat tensor})}, empty before the first step."""
    if hasattr(optimizer, "moment_slices"):
        return optimizer.moment_slices()
    names = _names(model)
    return {names[p]: (0, p.numel(), {k: s[k].detach().reshape(-1) for k in MOMENTS})
            for p, s in optimizer.state.items() if all(k in s for k in MOMENTS)}


def step_count(optimizer) -> Optional[int]:
    """AdamW's step count (None before the first step)."""
    if hasattr(optimizer, "step_count"):
        return optimizer.step_count()
    steps = {float(s["step"]) for s in optimizer.state.values() if "step" in s}
    if len(steps) > 1:
        raise MomentError(f"the parameters have different AdamW step counts {sorted(steps)}")
    return int(steps.pop()) if steps else None


def groups(model, optimizer) -> list:
    """The parameter groups with parameter names, as saved."""
    names = _names(model)
    return [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
            for g in optimizer.param_groups]


def check_groups(model, optimizer, saved: list) -> None:
    current = groups(model, optimizer)
    if len(saved) != len(current):
        raise MomentError(f"the checkpoint has {len(saved)} parameter groups, the optimizer {len(current)}")
    for i, (s, c) in enumerate(zip(saved, current)):
        if s["params"] != c["params"]:
            differing = sorted(set(s["params"]) ^ set(c["params"]))
            raise MomentError(f"parameter group {s.get('name', i)!r} holds other parameters in the checkpoint "
                              f"(differing: {differing[:3]})")


def load(model, optimizer, moments: Dict[str, Dict[str, torch.Tensor]], step: int, saved_groups: list) -> None:
    """Set the moments ({name: {moment: flat range}}; the model already holds the checkpoint's weights),
    the step count and (torch's path) the groups' hyperparameters as saved."""
    check_groups(model, optimizer, saved_groups)
    if hasattr(optimizer, "load_moments"):
        optimizer.load_moments(moments, step)
        return
    for group, saved in zip(optimizer.param_groups, saved_groups):
        group.update({k: v for k, v in saved.items() if k != "params"})
    set_whole(optimizer.state, model.named_parameters(), moments, step)


def set_whole(state: dict, named_parameters, moments: Dict[str, Dict[str, torch.Tensor]], step: int) -> None:
    """torch AdamW's per-parameter state from whole flat moments ({name: {moment: flat tensor}})."""
    for name, p in named_parameters:
        if name in moments:
            state[p] = {"step": torch.tensor(float(step)),
                        **{k: v.view(p.shape).to(p.device, p.dtype).clone() for k, v in moments[name].items()}}
