"""Checkpoints: ``DIR/iter_NNNNNNN/`` plus a ``DIR/latest`` pointer, written atomically, the newest
``keep`` kept.

A checkpoint holds the model and optimizer state, the step, every RNG state, the data position, the
whole training configuration and the parallel layout. It is written into ``iter_NNNNNNN.tmp`` and
renamed when complete, then ``latest`` is replaced: a crash at any moment leaves the previous
checkpoint and pointer intact. Loading refuses a checkpoint whose model configuration differs from
the run's, naming each difference.

Files: ``model_tpR.pt`` / ``optimizer_tpR.pt`` per tensor-parallel rank R (data-parallel replicas hold
the same state; rank 0 of each writes), ``rng_NNNNN.pt`` per process, ``train_state.json``. The model and
optimizer files hold pieces placed in the full tensors (pretrain/resharding.py), so a checkpoint loads
at any tensor-parallel size; RNG states are restored only when the layout is the same.
"""

import json
import os
import shutil
from typing import Optional

import torch

from data_prep.manifest import MANIFEST, Manifest, ManifestError, file_sha256
from pretrain import resharding
from pretrain.config import TrainConfig, config_from_dict
from pretrain.train_state import TRAIN_STATE, TrainState, TrainStateError

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


def save(root: str, step: int, model, optimizer, data_states: list, config: dict, layout, keep: int) -> str:
    """Collective: every rank calls it, with the bare model and the optimizer path's ``checkpoint_state``. Tensor-parallel ranks of data-parallel rank 0 write their model
    and optimizer shards, every rank its RNG state, rank 0 the train state, the rename and the pointer."""
    from pretrain.distributed import barrier

    final = iteration_dir(root, step)
    tmp = final + ".tmp"
    if layout.is_main:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(layout)
    # every rank: Megatron's distributed optimizer gathers the moments over the data-parallel group
    optimizer_pieces = resharding.optimizer_pieces(model, optimizer)
    if layout.dp_rank == 0:
        torch.save(resharding.model_pieces(model), os.path.join(tmp, f"model_tp{layout.tp_rank}.pt"))
        torch.save(optimizer_pieces, os.path.join(tmp, f"optimizer_tp{layout.tp_rank}.pt"))
    torch.save(_rng_state(), os.path.join(tmp, f"rng_{layout.rank:05d}.pt"))
    barrier(layout)
    if layout.is_main:
        TrainState(step, data_states, config, layout.as_dict()).write(tmp)
        shutil.rmtree(final, ignore_errors=True)  # a checkpoint of this step from a run that crashed later
        os.replace(tmp, final)
        pointer_tmp = os.path.join(root, LATEST + ".tmp")
        with open(pointer_tmp, "w") as f:
            f.write(os.path.basename(final))
        os.replace(pointer_tmp, os.path.join(root, LATEST))
        done = sorted(d for d in os.listdir(root) if d.startswith("iter_") and not d.endswith(".tmp"))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    barrier(layout)
    return final


STOP_MARKER = "stopped.json"


def write_stop_marker(root: str, step: int, why: str) -> None:
    """``ROOT/stopped.json`` after a stop that saved: the SLURM launcher requeues on it (a process's exit
    status can be lost when srun kills the others)."""
    tmp = os.path.join(root, STOP_MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"step": step, "reason": why}, f)
    os.replace(tmp, os.path.join(root, STOP_MARKER))


def model_differences(saved: dict, current: dict) -> list:
    diff = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            diff.append(f"model.{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now")
    return diff


def _read_all(path: str, kind: str, saved_tp: int) -> list:
    files = [os.path.join(path, f"{kind}_tp{r}.pt") for r in range(saved_tp)]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise CheckpointError(f"{path} was saved at tensor-parallel size {saved_tp} but lacks {missing}")
    # memory-mapped: a rank reads only the bytes of the pieces that overlap its own shards
    return [torch.load(f, map_location="cpu", weights_only=True, mmap=True) for f in files]


def read_state(folder: str) -> TrainState:
    """The checkpoint's train_state.json, checked (CheckpointError naming the file and field)."""
    try:
        return TrainState.read(folder)
    except TrainStateError as e:
        raise CheckpointError(str(e)) from e


def load(path: str, model, optimizer, config: dict, layout=None) -> TrainState:
    """Restore model, optimizer and RNG from ``path`` at this run's tensor-parallel size (any size the
    checkpoint was saved at); returns the saved train state."""
    state = read_state(path)
    diff = model_differences(state.config["model"], config["model"])
    if diff:
        raise CheckpointError(f"{path} holds a different model; refusing to load it:\n  " + "\n  ".join(diff))
    saved_layout = state.layout
    try:
        resharding.load_model(model, _read_all(path, "model", saved_layout["tensor"]))
        if optimizer is not None:
            resharding.load_optimizer(model, optimizer, _read_all(path, "optimizer", saved_layout["tensor"]))
    except resharding.ReshardError as e:
        raise CheckpointError(f"{path}: {e}") from e
    same_layout = all(saved_layout[k] == (getattr(layout, k) if layout else 1) for k in ("tensor", "data"))
    rng = os.path.join(path, f"rng_{layout.rank if layout else 0:05d}.pt")
    if optimizer is not None and same_layout and os.path.exists(rng):
        _set_rng_state(torch.load(rng, weights_only=False))
    return state


def config_at(saved: TrainState, tensor: int) -> TrainConfig:
    """The saved training configuration as a process at tensor-parallel size ``tensor`` builds its model
    (ConfigError naming the file when it does not parse)."""
    as_saved = saved.config
    here = {**as_saved, "parallel": {**as_saved.get("parallel", {}), "tensor": tensor,
                                     "sequence": as_saved.get("parallel", {}).get("sequence", False) and tensor > 1}}
    return config_from_dict(here, os.path.join(saved.folder, TRAIN_STATE))


def trained_tokenizer(config: TrainConfig, explicit: Optional[str] = None) -> str:
    """The path of the sentencepiece model a checkpoint's run was trained with: ``explicit``, else the one
    its shards' manifest names, checked against the manifest's sha256 (CheckpointError saying what to pass)."""
    data_dir = config.data.dir
    manifest = None
    if data_dir and os.path.exists(os.path.join(data_dir, MANIFEST)):
        try:
            manifest = Manifest.read(data_dir)
        except ManifestError as e:
            raise CheckpointError(f"the run's shard manifest is unreadable ({e}); give the tokenizer explicitly") from e
    path = explicit or (manifest.tokenizer.path if manifest else None)
    if not path:
        raise CheckpointError(f"no tokenizer: the run's data.dir ({data_dir or 'unset'}) has no manifest naming one; "
                              "give the tokenizer explicitly (the sentencepiece .model the shards were made with)")
    if not os.path.isfile(path):
        raise CheckpointError(f"tokenizer {path}: no such file" + ("" if explicit else " (named by the run's shard "
                                                                  "manifest); give the tokenizer explicitly"))
    if manifest and file_sha256(path) != manifest.tokenizer.sha256:
        raise CheckpointError(f"tokenizer {path} is not the one the run's shards were made with (sha256 differs)")
    return path


def load_model(checkpoint_dir: str, layout=None):
    """The model of a checkpoint, at this process's tensor-parallel size (``layout``; one process when
    None) whatever size it was saved at. Returns (train config, model config, model, saved train state)."""
    from titans_megatron import build_model  # megatron-core takes seconds to import: only when a model is built

    path = latest_dir(checkpoint_dir) or checkpoint_dir
    if not os.path.isfile(os.path.join(path, TRAIN_STATE)):
        raise FileNotFoundError(f"{checkpoint_dir}: neither a checkpoint folder with 'latest' nor an iter_NNNNNNN folder")
    saved = read_state(path)
    config = config_at(saved, layout.tensor if layout else 1)
    model_config = config.model_config()
    model = build_model(model_config, seed=config.run.seed)
    load(path, model, None, config.as_dict(), layout)
    model.to(layout.device if layout else torch.device("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return config, model_config, model, saved
