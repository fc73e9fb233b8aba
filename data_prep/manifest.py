"""``DIR/manifest.json``, the record of a shard set (typed, validated on read: ``Manifest.read``), and the
run's arguments: written atomically, compared on every rerun. ``format`` is the version: a manifest of
another format is refused by name."""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

MANIFEST = "manifest.json"
FORMAT = "titans-packed-webdataset-v1"


class ManifestError(Exception):
    """A manifest.json that is missing or malformed: the message names the file, the field and what was expected."""


@dataclass(frozen=True)
class ShardRecord:
    name: str  # the tar's file name inside its split folder
    samples: int
    tokens: int  # valid tokens over its samples
    sha256: str


@dataclass(frozen=True)
class SplitRecord:
    shards: Tuple[ShardRecord, ...]
    samples: int
    tokens: int
    documents: int
    rows: int
    document_tokens: int  # BOS + text + EOS of its documents (window slots not counted)


@dataclass(frozen=True)
class TokenizerRecord:
    path: str  # absolute, as given to tokenize.py: evaluation finds the tokenizer through it
    sha256: str
    vocab_size: int
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int


@dataclass(frozen=True)
class Manifest:
    tokenizer: TokenizerRecord
    seq_len: int
    window: int  # seq_len + 1 tokens per sample
    stride: int
    dtype: str  # numpy dtype name of the tokens
    seqs_per_shard: int
    splits: Dict[str, SplitRecord]
    arguments: dict  # the run's fingerprint (check_same_arguments)
    sources: List[dict] = field(default_factory=list)  # descriptive: path, rows, status per input file
    skipped: dict = field(default_factory=dict)  # descriptive: counts and rows of skipped input
    format: str = FORMAT

    def as_dict(self) -> dict:
        record = asdict(self)
        for split in record["splits"].values():
            split["shards"] = list(split["shards"])
        return record

    def write(self, directory: str) -> None:
        write_json(os.path.join(directory, MANIFEST), self.as_dict())

    @classmethod
    def read(cls, directory: str) -> "Manifest":
        path = os.path.join(directory, MANIFEST)
        try:
            record = read_json(path)
        except (ValueError, OSError) as e:
            raise ManifestError(f"{path} is unreadable ({e})") from e
        if record is None:
            raise ManifestError(f"{directory}: no {MANIFEST} (make the shards with data_prep/tokenize.py)")
        return cls.from_dict(record, path)

    @classmethod
    def from_dict(cls, record, path: str) -> "Manifest":
        def need(obj, key, kind, where):
            value = obj.get(key) if isinstance(obj, dict) else None
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ManifestError(f"{path}: field '{where}{key}' must be {getattr(kind, '__name__', 'str')}, "
                                    f"got {value!r:.80}")
            return value

        def fields(kind, obj, where):
            return kind(**{f: need(obj, f, kind.__annotations__[f], where) for f in kind.__annotations__})

        if not isinstance(record, dict):
            raise ManifestError(f"{path}: expected a JSON object, got {type(record).__name__}")
        if record.get("format") != FORMAT:
            raise ManifestError(f"{path}: format {record.get('format')!r}; this code reads {FORMAT!r} "
                                "(remake the shards with this data_prep/tokenize.py)")
        splits = {}
        for name, split in need(record, "splits", dict, "").items():
            where = f"splits.{name}."
            shards = tuple(fields(ShardRecord, s, f"{where}shards[{i}].")
                           for i, s in enumerate(need(split, "shards", list, where)))
            rest = {f: need(split, f, int, where) for f in SplitRecord.__annotations__ if f != "shards"}
            splits[name] = SplitRecord(shards, **rest)
        top = {f: need(record, f, int if kind is int else str, "")
               for f, kind in cls.__annotations__.items() if kind in (int, str)}
        return cls(tokenizer=fields(TokenizerRecord, need(record, "tokenizer", dict, ""), "tokenizer."), splits=splits,
                   arguments=need(record, "arguments", dict, ""), sources=record.get("sources", []),
                   skipped=record.get("skipped", {}), **top)


class ArgumentMismatch(Exception):
    pass


def file_sha256(path: str, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def differences(old: dict, new: dict) -> list:
    return [f"{key}: {old.get(key)!r} in the existing output, {new.get(key)!r} now"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def check_same_arguments(where: str, old: dict, new: dict) -> None:
    diff = differences(old, new)
    if diff:
        raise ArgumentMismatch(f"{where} was made with other arguments; refusing to mix them "
                               f"(use a new output directory, or remove this one):\n  " + "\n  ".join(diff))
