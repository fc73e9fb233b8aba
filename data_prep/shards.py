"""webdataset tar shards: written deterministically and atomically, read back sample by sample.

A sample is three tar members sharing its key: ``KEY.tokens.npy`` (one window, ``np.save`` bytes),
``KEY.json`` (its metadata) — webdataset groups members by the key before the first dot. Member
headers are fixed (mtime 0, owner 0), so the same samples always give the same bytes and sha256.
"""

import hashlib
import io
import json
import os
import tarfile
from typing import Iterator, List, Tuple

import numpy as np


def _member(name: str, data: bytes) -> Tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def encode_sample(key: str, tokens: np.ndarray, meta: dict) -> List[Tuple[str, bytes]]:
    npy = io.BytesIO()
    np.save(npy, tokens, allow_pickle=False)
    return [(f"{key}.tokens.npy", npy.getvalue()), (f"{key}.json", json.dumps(meta, separators=(",", ":")).encode())]


def write_shard(path: str, samples: List[Tuple[str, np.ndarray, dict]]) -> dict:
    """Write ``samples`` (key, tokens, meta) to ``path`` via a temporary name; returns its record."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, tokens, meta in samples:
            for name, data in encode_sample(key, tokens, meta):
                tar.addfile(*_member(name, data))
    data = buf.getvalue()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"name": os.path.basename(path), "samples": len(samples),
            "tokens": int(sum(meta["valid"] for _, _, meta in samples)), "sha256": hashlib.sha256(data).hexdigest()}


def read_shard(path: str) -> Iterator[Tuple[str, np.ndarray, dict]]:
    """(key, tokens, meta) of every sample of a shard, in order."""
    with tarfile.open(path, "r") as tar:
        pending = {}
        for member in tar:
            key, _, field = member.name.partition(".")
            data = tar.extractfile(member).read()
            pending.setdefault(key, {})[field] = data
            if len(pending[key]) == 2:
                fields = pending.pop(key)
                tokens = np.load(io.BytesIO(fields["tokens.npy"]), allow_pickle=False)
                yield key, tokens, json.loads(fields["json"])
        if pending:
            raise ValueError(f"{path}: incomplete samples {sorted(pending)} (each needs tokens.npy and json)")


class ShardReader:
    """One sample of a shard at a time, by its index in the shard (training reads only its own samples).

    The tar's member headers are indexed once (tarfile seeks over the data: a 512-byte header read per
    member); a sample then reads its two members alone, through a file kept open while the reader lives.
    """

    def __init__(self, path: str):
        self.path = path
        self._tar = tarfile.open(path, "r")
        pending, self._samples = {}, []
        for member in self._tar.getmembers():
            key, _, field = member.name.partition(".")
            pending.setdefault(key, {})[field] = member
            if len(pending[key]) == 2:
                self._samples.append((key, pending.pop(key)))
        if pending:
            self._tar.close()
            raise ValueError(f"{path}: incomplete samples {sorted(pending)} (each needs tokens.npy and json)")

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Tuple[str, np.ndarray, dict]:
        key, members = self._samples[index]
        tokens = np.load(io.BytesIO(self._tar.extractfile(members["tokens.npy"]).read()), allow_pickle=False)
        return key, tokens, json.loads(self._tar.extractfile(members["json"]).read())

    def close(self) -> None:
        self._tar.close()
