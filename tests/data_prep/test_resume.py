"""SIGKILL at a random point, rerun with the same arguments: the same bytes as an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import CORPUS, ROOT, shard_bytes, tokenize

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

ARGS = ["--seq-len", 32, "--seqs-per-shard", 8, "--docs-per-part", 6, "--val-docs", 7, "--workers", 2]


def _start(tokenizer, out):
    cmd = [sys.executable, str(ROOT / "data_prep" / "tokenize.py"), "--input", str(CORPUS), "--tokenizer",
           str(tokenizer), "--output", str(out), *map(str, ARGS)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _files(out):
    return sum(len(names) for _, _, names in os.walk(out)) if out.exists() else 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_and_resume_gives_identical_shards(tokenizer, tmp_path, seed):
    reference = tmp_path / "reference"
    tokenize(tokenizer, CORPUS, reference, *ARGS[6:], "--seq-len", 32, "--seqs-per-shard", 8, "--docs-per-part", 6)
    total = _files(reference)
    out = tmp_path / "killed"
    target = random.Random(seed).randint(1, total - 1)  # kill once this many files exist
    proc = _start(tokenizer, out)
    deadline = time.time() + 120
    while proc.poll() is None and _files(out) < target and time.time() < deadline:
        time.sleep(0.001)
    os.killpg(proc.pid, signal.SIGKILL)  # the workers too
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "manifest.json").exists(), "killed too late"
    assert _files(out) >= target
    tokenize(tokenizer, CORPUS, out, *ARGS[6:], "--seq-len", 32, "--seqs-per-shard", 8, "--docs-per-part", 6)
    assert shard_bytes(out) == shard_bytes(reference)
