"""Shards split by data-parallel rank are disjoint and complete; verify.py finds every kind of damage."""

import json

import pytest

from titans_data_prep.reader import webdataset_for_rank
from tests.helpers import CORPUS, run_cli, tokenize

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


@pytest.fixture(scope="module")
def shards(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "out"
    tokenize(tokenizer, CORPUS, out, "--val-docs", 10)
    return out


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_ranks_are_disjoint_and_complete(shards, world):
    manifest = json.loads((shards / "manifest.json").read_text())
    per_rank = [[key for key, _, _ in webdataset_for_rank(str(shards), "train", r, world)] for r in range(world)]
    keys = [k for rank in per_rank for k in rank]
    assert len(keys) == len(set(keys)) == manifest["splits"]["train"]["samples"]
    if world > 1:
        assert all(per_rank)  # every rank gets data (there are more shards than ranks)


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_verify_finds_damage(shards, tmp_path):
    run_cli("verify.py", shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    first = manifest["splits"]["train"]["shards"][0]["name"]

    flipped = _copy(shards, tmp_path / "flipped")
    path = flipped / "train" / first
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    proc = run_cli("verify.py", flipped, check=False)
    assert proc.returncode == 1 and f"{path}: sha256 differs" in proc.stderr

    missing = _copy(shards, tmp_path / "missing")
    (missing / "train" / first).unlink()
    (missing / "train" / "extra.tar").write_bytes(b"")
    proc = run_cli("verify.py", missing, check=False)
    assert proc.returncode == 1 and f"{missing / 'train' / first}: missing" in proc.stderr
    assert "extra.tar: not in the manifest" in proc.stderr

    small_vocab = _copy(shards, tmp_path / "vocab")
    m = json.loads((small_vocab / "manifest.json").read_text())
    m["tokenizer"]["vocab_size"] = 50
    (small_vocab / "manifest.json").write_text(json.dumps(m))
    proc = run_cli("verify.py", small_vocab, check=False)
    assert proc.returncode == 1 and "outside the vocabulary (50)" in proc.stderr
