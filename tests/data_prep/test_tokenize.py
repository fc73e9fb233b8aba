"""tokenize.py end to end on the shipped corpus: round trip, determinism, reruns, parquet input."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from titans_data_prep.shards import read_shard
from tests.helpers import CORPUS, corpus_docs, run_cli, shard_bytes, tokenize

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def _samples(out, split):
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["splits"][split]["shards"]:
        yield from read_shard(str(out / split / shard["name"]))


def _documents(out, split, bos, eos):
    """Rebuild every document of a split from its windows: {(source, row): token ids}."""
    parts = {}
    for key, tokens, meta in _samples(out, split):
        _, part, window = key.split("-")
        parts.setdefault(int(part), []).append((int(window), tokens, meta))
    docs = {}
    for part in sorted(parts):
        windows = sorted(parts[part], key=lambda w: w[0])
        assert [w[0] for w in windows] == list(range(len(windows))), "a window is missing"
        stream = list(windows[0][1][: windows[0][2]["valid"]])
        ids = [tuple(d) for d in windows[0][2]["docs"]]
        for _, tokens, meta in windows[1:]:
            stream += list(tokens[1 : meta["valid"]])
            ids += [tuple(d) for d in meta["docs"] if tuple(d) != ids[-1]]
        pieces, current = [], None
        for t in stream:
            if t == bos:
                current = []
            elif t == eos:
                pieces.append(current)
            else:
                current.append(int(t))
        assert len(pieces) == len(ids)
        docs.update(zip(ids, pieces))
    return docs


def test_round_trip_and_manifest(tokenizer, tmp_path):
    out = tmp_path / "out"
    proc = tokenize(tokenizer, CORPUS, out, "--val-docs", 12)
    assert "doc/s" in proc.stderr and "tok/s" in proc.stderr  # the progress bar
    run_cli("verify.py", out)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    manifest = json.loads((out / "manifest.json").read_text())
    texts = [d["text"] for d in corpus_docs()]
    assert manifest["sources"][0]["rows"] == len(texts)
    assert manifest["tokenizer"]["vocab_size"] == 1000 and manifest["dtype"] == "uint16"
    assert manifest["splits"]["val"]["documents"] == 12
    assert manifest["splits"]["val"]["document_tokens"] == sum(len(sp.encode(t)) + 2 for t in texts[:12])
    assert manifest["splits"]["train"]["documents"] == len(texts) - 12
    for split, rows in (("val", range(12)), ("train", range(12, len(texts)))):
        docs = _documents(out, split, sp.bos_id(), sp.eos_id())
        assert sorted(r for _, r in docs) == list(rows)
        for (_, row), ids in docs.items():
            assert sp.decode(ids) == sp.decode(sp.encode(texts[row]))  # the tokenizer's normalisation
            assert sp.decode(ids) == texts[row]                         # which is the identity here
    shards = manifest["splits"]["train"]["shards"]
    assert all(s["samples"] == 16 for s in shards[:-1]) and 0 < shards[-1]["samples"] <= 16


def test_output_does_not_depend_on_workers(tokenizer, tmp_path):
    tokenize(tokenizer, CORPUS, tmp_path / "a", "--val-docs", 5)
    tokenize(tokenizer, CORPUS, tmp_path / "b", "--val-docs", 5, "--workers", 1, "--threads", 1)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")


def test_rerun_does_nothing_and_other_arguments_refuse(tokenizer, tmp_path):
    out = tmp_path / "out"
    tokenize(tokenizer, CORPUS, out)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    proc = tokenize(tokenizer, CORPUS, out)
    assert "nothing to do" in proc.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before
    proc = run_cli("tokenize.py", "--input", CORPUS, "--tokenizer", tokenizer, "--output", out, "--seq-len", 32,
                   "--seqs-per-shard", 16, "--docs-per-part", 25, check=False)
    assert proc.returncode == 2
    assert "seq_len: 64 in the existing output, 32 now" in proc.stderr


def test_parquet_input_gives_the_same_windows(tokenizer, tmp_path):
    texts = [d["text"] for d in corpus_docs()]
    src = tmp_path / "src"
    src.mkdir()
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table.slice(0, 70), src / "a.parquet", row_group_size=16)
    pq.write_table(table.slice(70), src / "b.parquet", row_group_size=33)
    tokenize(tokenizer, src, tmp_path / "pq", "--val-docs", 3)
    tokenize(tokenizer, CORPUS, tmp_path / "js", "--val-docs", 3)
    for split in ("train", "val"):
        pq_tokens = [t for _, t, _ in _samples(tmp_path / "pq", split)]
        js_tokens = [t for _, t, _ in _samples(tmp_path / "js", split)]
        # the same rows in another file layout: parts cut at file ends differ, the text does not
        assert np.concatenate(pq_tokens).sum() > 0
        sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
        assert (sorted(_documents(tmp_path / "pq", split, sp.bos_id(), sp.eos_id()).values())
                == sorted(_documents(tmp_path / "js", split, sp.bos_id(), sp.eos_id()).values()))
        assert len(pq_tokens) > 0 and len(js_tokens) > 0


def test_max_docs(tokenizer, tmp_path):
    out = tmp_path / "out"
    tokenize(tokenizer, CORPUS, out, "--max-docs", 30, "--val-docs", 4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["val"]["rows"] == 4 and manifest["splits"]["train"]["rows"] == 26
