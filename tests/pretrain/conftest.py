"""Shards and a tiny training config shared by the pretrain tests."""

import json
import subprocess
import sys

import pytest

from tests.data_prep.conftest import CORPUS, ROOT, run_cli

SEQ = 32
VOCAB = 600


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_shards")
    run_cli("train_tokenizer.py", "--input", CORPUS, "--vocab-size", VOCAB, "--output", root / "tok.model")
    run_cli("tokenize.py", "--input", CORPUS, "--tokenizer", root / "tok.model", "--output", root / "shards",
            "--seq-len", SEQ, "--seqs-per-shard", 64, "--val-docs", 8, "--workers", 1)
    return root / "shards"


def tiny_overrides(shards, ckpt, **extra):
    base = {"data.dir": str(shards), "checkpoint.dir": str(ckpt), "schedule.train_steps": 12,
            "schedule.global_batch": 4, "schedule.micro_batch": 2, "checkpoint.interval": 4, "log.interval": 2,
            "eval.interval": 6, "eval.batches": 1, "optim.warmup_steps": 3,
            "model.overrides": {"seq_length": SEQ, "vocab_size": VOCAB, "window_size": 16, "num_persistent_tokens": 2,
                                "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 2,
                                "memory_chunk_size": 8}}
    extra = dict(extra)
    base["model.overrides"].update(extra.pop("model.overrides", {}))  # merged, as a config's base is
    base.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in base.items()]


def train_cmd(overrides):
    return [sys.executable, str(ROOT / "pretrain" / "train.py"), "--config", str(ROOT / "configs" / "tiny_mag.json"),
            *overrides]


def run_train(overrides, check=True):
    proc = subprocess.run(train_cmd(overrides), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def losses(ckpt):
    """step -> loss from metrics.jsonl (the last record of a step: a resumed run logs it again)."""
    out = {}
    for line in (ckpt / "tensorboard" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]
    return out
