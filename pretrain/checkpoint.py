"""Checkpoints: ``DIR/iter_NNNNNNN/`` plus a ``DIR/latest`` pointer, written atomically, the newest
``keep`` kept.

A checkpoint holds the model and optimizer state, the step, every RNG state, the data position, the
whole training configuration and the parallel layout. It is written into ``iter_NNNNNNN.tmp`` and
renamed when complete, then ``latest`` is replaced: a crash at any moment leaves the previous
checkpoint and pointer intact. Loading refuses a checkpoint whose model configuration differs from
the run's, naming each difference.

This first version saves unsharded state (tensor-parallel size 1); saving at one tensor-parallel size
and loading at another goes through the model's ``sharded_state_dict`` (next step, see docs/training.md).
"""

import json
import os
import shutil
from typing import Optional

import torch

LATEST = "latest"


class CheckpointError(Exception):
    pass


def iteration_dir(root: str, step: int) -> str:
    return os.path.join(root, f"iter_{step:07d}")


def latest_dir(root: str) -> Optional[str]:
    pointer = os.path.join(root, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(root, name)
    if not os.path.isdir(path):
        raise CheckpointError(f"{pointer} names {name}, which does not exist")
    return path


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(root: str, step: int, model, optimizer, data_state: dict, config: dict, layout: dict, keep: int) -> str:
    os.makedirs(root, exist_ok=True)
    final = iteration_dir(root, step)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch.save(model.state_dict(), os.path.join(tmp, "model.pt"))
    torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
    torch.save(_rng_state(), os.path.join(tmp, "rng.pt"))
    with open(os.path.join(tmp, "train_state.json"), "w") as f:
        json.dump({"step": step, "data": data_state, "config": config, "layout": layout}, f, indent=1)
    shutil.rmtree(final, ignore_errors=True)  # a checkpoint of this step from a run that crashed later
    os.replace(tmp, final)
    pointer_tmp = os.path.join(root, LATEST + ".tmp")
    with open(pointer_tmp, "w") as f:
        f.write(os.path.basename(final))
    os.replace(pointer_tmp, os.path.join(root, LATEST))
    done = sorted(d for d in os.listdir(root) if d.startswith("iter_") and not d.endswith(".tmp"))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def model_differences(saved: dict, current: dict) -> list:
    diff = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            diff.append(f"model.{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now")
    return diff


def load(path: str, model, optimizer, config: dict) -> dict:
    """Restore model, optimizer and RNG from ``path``; returns the saved train state."""
    with open(os.path.join(path, "train_state.json")) as f:
        state = json.load(f)
    diff = model_differences(state["config"]["model"], config["model"])
    if diff:
        raise CheckpointError(f"{path} holds a different model; refusing to load it:\n  " + "\n  ".join(diff))
    model.load_state_dict(torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu", weights_only=True))
        _set_rng_state(torch.load(os.path.join(path, "rng.pt"), weights_only=False))
    return state
