"""Shared fixtures: a tokenizer trained once on the shipped corpus, and a CLI runner."""

import gzip
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data_prep" / "corpus" / "python_docs.jsonl.gz"


def run_cli(script, *args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, str(ROOT / "data_prep" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def corpus_docs():
    with gzip.open(CORPUS, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer") / "corpus.model"
    run_cli("train_tokenizer.py", "--input", CORPUS, "--vocab-size", 1000, "--output", path)
    return path


def tokenize(tokenizer, src, out, *extra, check=True):
    return run_cli("tokenize.py", "--input", src, "--tokenizer", tokenizer, "--output", out, "--seq-len", 64,
                   "--seqs-per-shard", 16, "--docs-per-part", 25, "--workers", 2, *extra, check=check)


def shard_bytes(directory):
    """{relative path: bytes} of every file under ``directory``."""
    root = pathlib.Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
