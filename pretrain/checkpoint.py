"""Checkpoints: ``DIR/iter_NNNNNNN/`` plus a ``DIR/latest`` pointer, written atomically, the newest
``keep`` kept.

A checkpoint holds the model and optimizer state, the step, every RNG state, the data position, the
whole training configuration and the parallel layout. It is written into ``iter_NNNNNNN.tmp`` and
renamed when complete (with ``asynchronous``, once the background write is), then ``latest`` is
replaced: a crash at any moment leaves the previous checkpoint and pointer intact. Loading refuses a
checkpoint whose model configuration differs from the run's, naming each difference.

Files: the model and AdamW moments sharded over every rank (pretrain/sharded_checkpoint.py: DCP's
``.metadata`` and ``__R_0.distcp``), ``optimizer.pt`` (groups, step count), ``rng_NNNNN.pt`` per process,
``train_state.json``, and what makes a copied checkpoint self-contained: ``tokenizer.model`` (the run's
sentencepiece model) and ``data_summary.json`` (the shards' manifest in brief: where, sequence length,
tokenizer, split sizes). It loads at any tensor- and data-parallel size; RNG states (tensors: every file
loads with ``weights_only=True``) are restored only when the layout is the same. Checkpoints of the
previous format (``model_tpR.pt`` / ``optimizer_tpR.pt`` per tensor-parallel rank: pretrain/resharding.py)
still load.
"""

import json
import os
import pickle
import shutil
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.distributed as dist

from titans_data_prep.manifest import MANIFEST, Manifest, ManifestError, file_sha256, write_json
from titans_pretrain import hf_import, moments, resharding
from titans_pretrain import sharded_checkpoint as sharded
from titans_pretrain.config import TrainConfig, config_from_dict
from titans_pretrain.train_state import TRAIN_STATE, TrainState, TrainStateError

LATEST = "latest"
TOKENIZER = "tokenizer.model"
DATA_SUMMARY = "data_summary.json"
OPTIMIZER = "optimizer.pt"  # the groups and step count (the moments are in the sharded state)


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


def checkpoint_group():
    """A gloo group of every rank for the checkpoint's collectives: its own, so an asynchronous save's
    background thread never interleaves with the training's collectives (made on first use, by every
    rank: saves and loads are collective)."""
    global _GROUP
    if _GROUP is None:
        _GROUP = dist.new_group(backend="gloo")
    return _GROUP


_GROUP = None


class PendingSave:
    """A save in flight. Its files go to ``iter_N.tmp``; ``finish`` (rank 0) renames the folder,
    replaces ``latest`` and drops checkpoints beyond ``keep``, once the checkpoint is whole."""

    def __init__(self, root: str, final: str, keep: int, layout, future=None):
        self.root, self.final, self.keep, self.layout, self.future = root, final, keep, layout, future
        self.finished = False

    def ready(self) -> bool:
        """Rank 0: its background write is done, which in DCP means every rank's is (rank 0 writes the
        checkpoint's metadata last, after gathering every rank's write results)."""
        return self.future is None or self.future.done()

    def finish(self) -> None:
        if not self.layout.is_main or self.finished:
            return
        if self.future is not None:
            self.future.result()  # a failed write raises here, and the previous checkpoint stays latest
        shutil.rmtree(self.final, ignore_errors=True)  # a checkpoint of this step from a run that crashed later
        os.replace(self.final + ".tmp", self.final)
        pointer_tmp = os.path.join(self.root, LATEST + ".tmp")
        with open(pointer_tmp, "w") as f:
            f.write(os.path.basename(self.final))
        os.replace(pointer_tmp, os.path.join(self.root, LATEST))
        done = sorted(d for d in os.listdir(self.root) if d.startswith("iter_") and not d.endswith(".tmp"))
        for old in done[:-self.keep] if self.keep > 0 else []:
            shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
        self.finished = True

    def wait(self) -> str:
        """Collective: every rank's write completes (errors raised on the rank that had them), then rank 0
        finishes. Returns the checkpoint's folder."""
        from titans_pretrain.distributed import barrier

        if self.future is not None:
            self.future.result()
        barrier(self.layout)
        self.finish()
        barrier(self.layout)
        return self.final


def save(root: str, step: int, model, optimizer, data_states: list, config: dict, layout, keep: int,
         bundle: Optional[Bundle] = None, asynchronous: bool = False):
    """Collective: every rank calls it, with the bare model and the optimizer path's ``checkpoint_state``.
    Every rank writes its share of the model and AdamW state (pretrain/sharded_checkpoint.py) and its
    RNG state; rank 0 the train state, the optimizer's groups and step, the ``bundle``. Returns the
    checkpoint's folder, or with ``asynchronous`` a PendingSave whose state was copied to host memory:
    training may go on while it is written; ``wait`` (or ``ready`` and ``finish`` on rank 0) completes it."""
    from titans_pretrain.distributed import barrier

    final = iteration_dir(root, step)
    tmp = final + ".tmp"
    if layout.is_main:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(layout)
    group = checkpoint_group()
    chunks = sharded.model_chunks(model)
    if optimizer is not None:
        chunks += sharded.moment_chunks(model, moments.slices(model, optimizer))
    chunks = sharded.write_share(chunks, group)
    torch.save(_rng_state(), os.path.join(tmp, f"rng_{layout.rank:05d}.pt"))
    if layout.is_main:
        if optimizer is not None:
            torch.save({"format": sharded.FORMAT, "step": moments.step_count(optimizer),
                        "groups": moments.groups(model, optimizer)}, os.path.join(tmp, OPTIMIZER))
        if bundle is not None:
            bundle.write(tmp)
        TrainState(step, data_states, config, layout.as_dict()).write(tmp)
    pending = PendingSave(root, final, keep, layout, sharded.save(tmp, chunks, group, asynchronous))
    return pending if asynchronous else pending.wait()


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


def _legacy(folder: str) -> bool:
    """Saved before the sharded format (titans-tp-pieces-1: one file per tensor-parallel rank)."""
    return os.path.isfile(os.path.join(folder, "model_tp0.pt"))


def missing_files(folder: str, state: TrainState) -> str:
    """What the checkpoint in ``folder`` lacks of its model state ('' when whole)."""
    if _legacy(folder):
        tensor = state.layout["tensor"]
        missing = [f"model_tp{r}.pt" for r in range(tensor) if not os.path.isfile(os.path.join(folder, f"model_tp{r}.pt"))]
        return f"saved at tensor-parallel size {tensor} but lacks {', '.join(missing)}" if missing else ""
    return sharded.incomplete(folder)


def restore_legacy(folder: str, model, optimizer, saved_tp: int) -> None:
    resharding.load_model(model, _read_all(folder, "model", saved_tp))
    if optimizer is not None:
        resharding.load_optimizer(model, optimizer, _read_all(folder, "optimizer", saved_tp))


def restore_sharded(folder: str, model, optimizer) -> None:
    """Every rank reads the boxes of the saved chunks it needs for its own shards (any layout)."""
    saved = sharded.saved_tensors(folder)
    targets = {}
    chunks = sharded.model_chunks(model, into=targets)
    sharded.check_names({c.key for c in chunks}, saved)
    meta, flats = None, {}
    if optimizer is not None:
        path = os.path.join(folder, OPTIMIZER)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: no such file (the optimizer's groups and step count)")
        meta = _load(path)
        placements, params = resharding.placements_of(model), dict(model.named_parameters())
        for name, (start, end) in moments.ranges(model, optimizer).items() if meta["step"] is not None else ():
            for moment in moments.MOMENTS:
                flat = torch.empty(end - start, dtype=torch.float32)
                boxes = sharded.range_chunks(name, placements.get(name), params[name], start, end, flat)
                for box in boxes:  # box keys name the parameter's pieces (one parameter may have several)
                    box.key += f"#{moment}"
                if any(box.key in saved for box in boxes):  # a parameter never stepped has no moments
                    chunks += boxes
                    flats.setdefault(name, {})[moment] = flat
    sharded.load(folder, chunks, checkpoint_group())
    model.load_state_dict({**model.state_dict(), **targets})
    if meta is not None:
        moments.load(model, optimizer, flats, meta["step"] or 0, meta["groups"])


def _restore(folder: str, model, optimizer, saved_tp: int) -> None:
    """Model (and optimizer) state from ``folder`` at this run's layout, whatever layout it was saved at."""
    try:
        if _legacy(folder):
            restore_legacy(folder, model, optimizer, saved_tp)
        else:
            restore_sharded(folder, model, optimizer)
    except (resharding.ReshardError, sharded.ShardError, moments.MomentError) as e:
        raise CheckpointError(f"{folder}: {e}") from e


def load(path: str, model, optimizer, config: dict, layout=None) -> TrainState:
    """Restore model, optimizer and RNG from ``path`` at this run's tensor- and data-parallel sizes (any
    sizes the checkpoint was saved at); returns the saved train state."""
    state = read_state(path)
    diff = model_differences(state.config["model"], config["model"])
    if diff:
        raise CheckpointError(f"{path} holds a different model; refusing to load it:\n  " + "\n  ".join(diff))
    saved_layout = state.layout
    _restore(path, model, optimizer, saved_layout["tensor"])
    same_layout = all(saved_layout.get(k, 1) == (getattr(layout, k) if layout else 1) for k in ("tensor", "data", "context"))
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
    and shapes must match; other model settings may differ. ``path`` may also be a Hugging Face folder
    (eval_suite/export_hf.py's): its weights only."""
    if os.path.isdir(path) and hf_import.is_hf_folder(path):
        if optimizer is not None:
            raise CheckpointError(f"checkpoint.init_from {path}: a Hugging Face folder holds no optimizer state "
                                  "(set checkpoint.init_optimizer false)")
        try:
            hf_import.load(path, model)
        except hf_import.HFImportError as e:
            raise CheckpointError(f"checkpoint.init_from {e}") from e
        return TrainState(step=hf_import.hf_step(path), data=[], config={}, layout={}, folder=path)
    folder = checkpoint_folder(path, "checkpoint.init_from")
    state = read_state(folder)
    try:
        _restore(folder, model, optimizer, state.layout["tensor"])
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint.init_from {e} (init_from keeps every parameter's shape: change only "
                              "what does not resize one)") from e
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
