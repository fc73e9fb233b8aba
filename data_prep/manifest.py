"""``DIR/manifest.json`` and the run's arguments: written atomically, compared on every rerun."""

import hashlib
import json
import os
from typing import Optional

MANIFEST = "manifest.json"
FORMAT = "titans-packed-webdataset-v1"


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
