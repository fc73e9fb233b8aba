"""``train_state.json``, the record of a checkpoint that says what it is: the step, the data position,
the whole training configuration and the parallel layout it was saved at.
Typed and versioned; read by pretrain (resume, preflight, loading a model), eval_suite and bench.
A file without ``version`` is version 1 (the same fields: checkpoints written before the version)."""

import json
import os
from dataclasses import asdict, dataclass, field
from typing import List

TRAIN_STATE = "train_state.json"
VERSION = 1


class TrainStateError(Exception):
    """A train_state.json that cannot be read: the message names the file and what was expected."""


@dataclass
class TrainState:
    step: int
    data: List[dict]  # [the global data position] (titans_pretrain.data.ShardStream.state_dict; before 2026-12-02 one per
    # data-parallel rank, in a per-rank order that cannot be resumed now)
    config: dict  # titans_pretrain.config.TrainConfig.as_dict()
    layout: dict  # titans_pretrain.distributed.Layout.as_dict(): tensor, data, ...
    version: int = VERSION
    folder: str = field(default="", compare=False)  # where it was read from (not written)

    def write(self, folder: str) -> None:
        record = {k: v for k, v in asdict(self).items() if k != "folder"}
        with open(os.path.join(folder, TRAIN_STATE), "w") as f:
            json.dump(record, f, indent=1)

    @classmethod
    def read(cls, folder: str) -> "TrainState":
        path = os.path.join(folder, TRAIN_STATE)
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (ValueError, OSError) as e:
            raise TrainStateError(f"{path} is unreadable ({e})") from e
        if not isinstance(record, dict):
            raise TrainStateError(f"{path}: expected a JSON object, got {type(record).__name__}")
        version = record.get("version", 1)
        if version != VERSION:
            raise TrainStateError(f"{path}: format version {version}; this code reads version {VERSION}")
        expected = {"step": int, "data": list, "config": dict, "layout": dict}
        for name, kind in expected.items():
            if not isinstance(record.get(name), kind) or (kind is int and isinstance(record[name], bool)):
                raise TrainStateError(f"{path}: field {name!r} must be {kind.__name__}, got {record.get(name)!r:.80}")
        for name in ("tensor", "data"):
            if not isinstance(record["layout"].get(name), int):
                raise TrainStateError(f"{path}: field 'layout.{name}' must be int, got {record['layout'].get(name)!r}")
        if not isinstance(record["config"].get("model"), dict):
            raise TrainStateError(f"{path}: field 'config.model' must be an object")
        return cls(record["step"], record["data"], record["config"], record["layout"], version, folder)
