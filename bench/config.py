"""A benchmark's JSON configuration, read with the checks every benchmark makes: the keys it needs,
and (for those that take one) a precision bf16 or fp32. Each script checks its own keys after this."""

import json
from typing import Sequence

PRECISIONS = ("bf16", "fp32")


def read_config(path: str, required: Sequence[str], precision: bool = True) -> dict:
    with open(path) as f:
        cfg = json.load(f)
    missing = [k for k in required if k not in cfg]
    if missing:
        raise SystemExit(f"{path}: missing keys {missing} (expected {list(required)})")
    if precision and cfg["precision"] not in PRECISIONS:
        raise SystemExit(f"{path}: precision must be 'bf16' or 'fp32', got {cfg['precision']!r}")
    return cfg


def config_device(path: str, cfg: dict):
    """The config's ``device`` as a torch.device; a CUDA device where none is visible is the config's error."""
    import torch

    device = torch.device(cfg["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{path}: device {cfg['device']!r} but no CUDA device is visible")
    return device
