"""One part, start to finish, in a worker process: read, tokenize (sentencepiece's threaded batch
encode), pack, write its full shards; its last, partial shard goes to the state directory for the
final merge. The part's record is written last: a part with a record is done, one without is redone
from its start (its shards are rewritten with the same bytes)."""

import os
from dataclasses import dataclass
from typing import Optional

from titans_data_prep import tokenizer as tok
from titans_data_prep.manifest import write_json
from titans_data_prep.packing import Packer
from titans_data_prep.shards import write_shard
from titans_data_prep.sources import read_texts

STATE_DIR = ".tokenize_state"
MAX_LISTED_SKIPS = 1000  # per part; every skip is counted, the first ones are listed with row and reason


@dataclass(frozen=True)
class Settings:
    output: str
    tokenizer: str
    seq_len: int
    seqs_per_shard: int
    text_column: str
    skip_bad_files: bool
    threads: int
    batch_chars: int  # characters handed to one encode call


def part_record_path(output: str, index: int) -> str:
    return os.path.join(output, STATE_DIR, "parts", f"{index:05d}.json")


def partial_shard_path(output: str, split: str, index: int) -> str:
    return os.path.join(output, STATE_DIR, "partial", f"{split}-{index:05d}.tar")


_state = {}


def init(settings: Settings, progress) -> None:
    """Pool initializer: the tokenizer is loaded once per worker process."""
    sp, info = tok.load(settings.tokenizer)
    _state.update(settings=settings, sp=sp, info=info, progress=progress)


def _report(docs: int, tokens: int) -> None:
    if _state["progress"] is not None:
        _state["progress"].put((docs, tokens))


def process_part(part) -> dict:
    s: Settings = _state["settings"]
    sp, info = _state["sp"], _state["info"]
    packer = Packer(s.seq_len, info.bos_id, info.eos_id, info.dtype)
    stats = {"rows": part.stop - part.start, "documents": 0, "tokens": 0, "skip_counts": {}, "skips": []}
    shards, pending, windows = [], [], 0

    def emit(window, meta):
        nonlocal windows
        pending.append((f"{part.split}-{part.index:05d}-{windows:07d}", window, meta))
        windows += 1
        if len(pending) == s.seqs_per_shard:
            name = f"{part.split}-{part.index:05d}-{len(shards):04d}.tar"
            shards.append(write_shard(os.path.join(s.output, part.split, name), pending))
            pending.clear()

    def flush(batch):
        encoded = sp.encode([text for _, text in batch], num_threads=s.threads)
        for (row, _), ids in zip(batch, encoded):
            for window, meta in packer.add(ids, part.source, row):
                emit(window, meta)
            stats["tokens"] += len(ids) + 2
        stats["documents"] += len(batch)
        _report(len(batch), sum(len(ids) + 2 for ids in encoded))

    batch, chars, unreported = [], 0, 0
    for row, text, skips in read_texts(part.path, s.text_column, part.start, part.stop, s.skip_bad_files):
        for skip in skips:
            stats["skip_counts"][skip.reason] = stats["skip_counts"].get(skip.reason, 0) + 1
            if len(stats["skips"]) < MAX_LISTED_SKIPS:
                stats["skips"].append({"source": part.source, "row": skip.row, "reason": skip.reason, "kept": skip.kept})
        if text is None:
            unreported += 1
            continue
        batch.append((row, text))
        chars += len(text)
        if chars >= s.batch_chars:
            flush(batch)
            batch, chars = [], 0
    if batch:
        flush(batch)
    _report(unreported, 0)
    for window, meta in packer.finish():
        emit(window, meta)
    partial: Optional[dict] = None
    if pending:
        partial = write_shard(partial_shard_path(s.output, part.split, part.index), pending)
    record = {"part": part.as_dict(), "shards": shards, "partial": partial, "windows": windows, **stats}
    write_json(part_record_path(s.output, part.index), record)
    return record
