"""A checkpoint as eval_suite/run.py checks it before building any model: the ``iter_NNNNNNN`` folder it
means, that the folder holds what loading reads (train_state.json, one model file per tensor-parallel
rank it was saved at), the model's training context, and the tokenizer (found, checked against the
run's shards, and loaded). Each failure names the checkpoint as given, once, and what was expected.

Names (``Checkpoint.name``, a report's row, file names): a run folder (loaded at its ``latest``) is
named after itself (``runs/mag`` -> ``mag``); an ``iter_NNNNNNN`` folder given alone after its run
folder and step (``runs/mag/iter_0000040`` -> ``mag@40``), so that two runs' iterations, or two
iterations of one run, stay apart.
"""

import os
from dataclasses import dataclass
from typing import Optional

from titans_eval_suite.codec import Codec
from titans_eval_suite.errors import EvalInputError
from titans_pretrain.train_state import TRAIN_STATE, TrainState, TrainStateError

STATE_FILE = TRAIN_STATE


@dataclass
class Checkpoint:
    path: str  # as given
    folder: str  # the iter_NNNNNNN folder it means
    label: str  # "checkpoint PATH" (+ " (iter_NNNNNNN)" when its latest chose the folder): errors start with it
    name: str
    step: int
    seq_length: int
    tokenizer: str  # its path
    codec: Codec  # the tokenizer, loaded


def check_folder(path: str) -> None:
    """The check that needs no imports (titans_pretrain.checkpoint's take seconds): eval_suite/run.py makes it
    before the others, so a mistyped path fails at once."""
    if not os.path.isdir(path):
        raise EvalInputError(f"checkpoint {path}: no such folder")


def _resolve(path: str):
    """(the iter folder, whether ``path`` named it through its ``latest``)."""
    from titans_pretrain.checkpoint import LATEST, CheckpointError, latest_dir

    check_folder(path)
    try:
        folder = latest_dir(path)
    except CheckpointError:  # its message names the pointer's full path: say it relative to ours
        with open(os.path.join(path, LATEST)) as f:
            named = f.read().strip()
        raise EvalInputError(f"checkpoint {path}: its '{LATEST}' names {named!r}, which does not exist") from None
    if folder is None and not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise EvalInputError(f"checkpoint {path}: neither a run folder with '{LATEST}' nor an iter_NNNNNNN folder "
                             f"with {STATE_FILE}")
    return (folder, True) if folder else (path, False)


def _codec(path: str, label: str, vocab_size: int) -> Codec:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(path)
    except (OSError, RuntimeError) as e:
        raise EvalInputError(f"tokenizer {path}: not a sentencepiece model ({e})") from e
    if sp.GetPieceSize() > vocab_size:
        raise EvalInputError(f"tokenizer {path} has {sp.GetPieceSize()} pieces, the model of {label} {vocab_size}")
    return Codec(sp)


def inspect(path: str, tokenizer: Optional[str] = None) -> Checkpoint:
    """Everything about the checkpoint at ``path`` that can be known without building its model."""
    from titans_pretrain.checkpoint import CheckpointError, config_at, missing_files, trained_tokenizer
    from titans_pretrain.config import ConfigError

    folder, via_latest = _resolve(path)
    label = f"checkpoint {path}" + (f" ({os.path.basename(folder)})" if via_latest else "")
    try:
        saved = TrainState.read(folder)
    except TrainStateError as e:  # its message starts with the file's path: name the checkpoint as given
        raise EvalInputError(f"{label}: {str(e).replace(os.path.join(folder, STATE_FILE), STATE_FILE, 1)}") from e
    step = saved.step
    missing = missing_files(folder, saved)
    if missing:
        raise EvalInputError(f"{label}: {missing}")
    try:  # as titans_pretrain.checkpoint.load_model builds it: in one process
        train_config = config_at(saved, tensor=1)
        model_config = train_config.model_config(perform_initialization=False)
    except (ConfigError, ValueError, TypeError) as e:
        raise EvalInputError(f"{label}: its training configuration does not make a model "
                             f"({str(e).replace(os.path.join(folder, STATE_FILE), STATE_FILE)})") from e
    try:
        tokenizer = trained_tokenizer(train_config, tokenizer, folder)
    except CheckpointError as e:
        raise EvalInputError(f"{label}: {e} (--tokenizer PATH)") from e
    codec = _codec(tokenizer, label, model_config.vocab_size)
    run = os.path.basename(os.path.normpath(os.path.abspath(path)))
    name = run if via_latest else f"{os.path.basename(os.path.dirname(os.path.abspath(folder)))}@{step}"
    return Checkpoint(path, folder, label, name, step, model_config.seq_length, tokenizer, codec)
