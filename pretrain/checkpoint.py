"""Checkpoints: ``DIR/iter_NNNNNNN/`` plus a ``DIR/latest`` pointer, written atomically, the newest
``keep`` kept.

A checkpoint holds the model and optimizer state, the step, every RNG state, the data position, the
whole training configuration and the parallel layout. It is written into ``iter_NNNNNNN.tmp`` and
renamed when complete, then ``latest`` is replaced: a crash at any moment leaves the previous
checkpoint and pointer intact. Loading refuses a checkpoint whose model configuration differs from
the run's, naming each difference.

Files: ``model_tpR.pt`` / ``optimizer_tpR.pt`` per tensor-parallel rank R (data-parallel replicas hold
the same state; rank 0 of each writes), ``rng_NNNNN.pt`` per process, ``train_state.json``, and what
makes a copied checkpoint self-contained: ``tokenizer.model`` (the run's sentencepiece model) and
``data_summary.json`` (the shards' manifest in brief: where, sequence length, tokenizer, split sizes).
The model and optimizer files hold pieces placed in the full tensors (pretrain/resharding.py), so a
checkpoint loads at any tensor-parallel size; RNG states (tensors: every file loads with
``weights_only=True``) are restored only when the layout is the same.
"""

import json
import os
import pickle
import shutil
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from data_prep.manifest import MANIFEST, Manifest, ManifestError, file_sha256, write_json
from pretrain import resharding
from pretrain.config import TrainConfig, config_from_dict
from pretrain.train_state import TRAIN_STATE, TrainState, TrainStateError

LATEST = "latest"
TOKENIZER = "tokenizer.model"
DATA_SUMMARY = "data_summary.json"


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


@dataclass(frozen=True)
class Bundle:
    """What a checkpoint carries besides the training state: the run's tokenizer and data summary."""

    tokenizer: str  # path of the sentencepiece model the shards were made with
    data_summary: dict

    @classmethod
    def of(cls, manifest: Manifest, data_dir: str) -> "Bundle":
        """Checked before training starts: a save must not fail on a tokenizer moved since tokenization."""
        path = manifest.tokenizer.path
        where = os.path.join(data_dir, MANIFEST)
        if not os.path.isfile(path):
            raise CheckpointError(f"{where} names the tokenizer {path}, which does not exist; checkpoints carry a "
                                  "copy of it: restore it there (or remake the shards)")
        if file_sha256(path) != manifest.tokenizer.sha256:
            raise CheckpointError(f"tokenizer {path} is not the one {where} records (sha256 differs): the shards were "
                                  "made with another")
        splits = {name: {"shards": len(split.shards), "samples": split.samples, "tokens": split.tokens,
                         "documents": split.documents} for name, split in manifest.splits.items()}
        return cls(path, {"data_dir": os.path.abspath(data_dir), "format": manifest.format, "seq_len": manifest.seq_len,
                          "tokenizer": asdict(manifest.tokenizer), "splits": splits})

    def write(self, folder: str) -> None:
        shutil.copyfile(self.tokenizer, os.path.join(folder, TOKENIZER))
        write_json(os.path.join(folder, DATA_SUMMARY), self.data_summary)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(root: str, step: int, model, optimizer, data_states: list, config: dict, layout, keep: int,
         bundle: Optional[Bundle] = None) -> str:
    """Collective: every rank calls it, with the bare model and the optimizer path's ``checkpoint_state``.
    Tensor-parallel ranks of data-parallel rank 0 write their model and optimizer shards, every rank its
    RNG state, rank 0 the train state, the ``bundle``, the rename and the pointer."""
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
        if bundle is not None:
            bundle.write(tmp)
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
    return [_load(f) for f in files]


def _load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path} is unreadable: truncated, half-written or not a checkpoint file "
                              f"({str(e).splitlines()[0]})") from e


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
        _set_rng_state(_load(rng))
    return state


def checkpoint_folder(path: str, what: str) -> str:
    """The iter folder ``path`` means: a run folder's ``latest``, or the folder itself (CheckpointError
    naming ``what`` when it is neither)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{what} {path}: no such directory")
    folder = latest_dir(path) or path
    if not os.path.isfile(os.path.join(folder, TRAIN_STATE)):
        raise CheckpointError(f"{what} {path}: neither a run folder with '{LATEST}' nor an iter_NNNNNNN folder "
                              f"with {TRAIN_STATE}")
    return folder


def init_from(path: str, model, optimizer=None) -> TrainState:
    """A new run's starting weights (and, given ``optimizer``, AdamW moments) from another run's checkpoint
    at any tensor-parallel size; nothing else of it (step, data position, RNG) is taken. Parameter names
    and shapes must match; other model settings may differ."""
    folder = checkpoint_folder(path, "checkpoint.init_from")
    state = read_state(folder)
    saved_tp = state.layout["tensor"]
    try:
        resharding.load_model(model, _read_all(folder, "model", saved_tp))
        if optimizer is not None:
            resharding.load_optimizer(model, optimizer, _read_all(folder, "optimizer", saved_tp))
    except resharding.ReshardError as e:
        raise CheckpointError(f"checkpoint.init_from {folder}: {e} (init_from keeps every parameter's shape: "
                              "change only what does not resize one)") from e
    return state


def config_at(saved: TrainState, tensor: int) -> TrainConfig:
    """The saved training configuration as a process at tensor-parallel size ``tensor`` builds its model
    (ConfigError naming the file when it does not parse)."""
    as_saved = saved.config
    here = {**as_saved, "parallel": {**as_saved.get("parallel", {}), "tensor": tensor,
                                     "sequence": as_saved.get("parallel", {}).get("sequence", False) and tensor > 1}}
    return config_from_dict(here, os.path.join(saved.folder, TRAIN_STATE))


def trained_tokenizer(config: TrainConfig, explicit: Optional[str] = None, folder: Optional[str] = None) -> str:
    """The path of the sentencepiece model a checkpoint's run was trained with: ``explicit``, else the copy
    inside the checkpoint ``folder``, else (checkpoints older than that copy) the one its shards' manifest
    names; checked against the sha256 the checkpoint or the manifest records (CheckpointError saying
    what to pass)."""
    own = os.path.join(folder, TOKENIZER) if folder else None
    if own and os.path.isfile(own):
        summary = os.path.join(folder, DATA_SUMMARY)
        try:
            with open(summary) as f:
                sha256 = json.load(f)["tokenizer"]["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{summary} is unreadable or lacks tokenizer.sha256 ({e}); give the tokenizer "
                                  "explicitly") from e
        path = explicit or own
        if not os.path.isfile(path):
            raise CheckpointError(f"tokenizer {path}: no such file")
        if file_sha256(path) != sha256:
            raise CheckpointError(f"tokenizer {path} is not the one the run was trained with (sha256 differs from "
                                  f"{summary})")
        return path
    data_dir = config.data.dir
    manifest = None
    if data_dir and os.path.exists(os.path.join(data_dir, MANIFEST)):
        try:
            manifest = Manifest.read(data_dir)
        except ManifestError as e:
            raise CheckpointError(f"the run's shard manifest is unreadable ({e}); give the tokenizer explicitly") from e
    path = explicit or (manifest.tokenizer.path if manifest else None)
    if not path:
        raise CheckpointError(f"no tokenizer: the checkpoint holds no {TOKENIZER} and the run's data.dir "
                              f"({data_dir or 'unset'}) has no manifest naming one; give the tokenizer explicitly "
                              "(the sentencepiece .model the shards were made with)")
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

    path = checkpoint_folder(checkpoint_dir, "checkpoint")
    saved = read_state(path)
    config = config_at(saved, layout.tensor if layout else 1)
    model_config = config.model_config()
    model = build_model(model_config, seed=config.run.seed)
    load(path, model, None, config.as_dict(), layout)
    model.to(layout.device if layout else torch.device("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return config, model_config, model, saved
