"""manifest.json as a typed record: written and read back unchanged, and every malformed field named."""

import json

import pytest

from titans_data_prep.manifest import FORMAT, MANIFEST, Manifest, ManifestError, ShardRecord, SplitRecord, TokenizerRecord


def _manifest() -> Manifest:
    shards = (ShardRecord("train-0000.tar", 4, 100, "a" * 64), ShardRecord("train-rest-0000.tar", 1, 7, "b" * 64))
    return Manifest(
        tokenizer=TokenizerRecord("/tok/sp.model", "c" * 64, 1000, 0, 1, 2, -1), seq_len=32, window=33, stride=32,
        dtype="uint16", seqs_per_shard=4,
        splits={"train": SplitRecord(shards, 5, 107, 3, 3, 110), "val": SplitRecord((), 0, 0, 0, 0, 0)},
        arguments={"seq_len": 32}, sources=[{"index": 0, "path": "/in.jsonl", "rows": 3, "status": "ok"}],
        skipped={"counts": {}, "rows": []})


def test_round_trip(tmp_path):
    manifest = _manifest()
    manifest.write(str(tmp_path))
    assert Manifest.read(str(tmp_path)) == manifest
    assert json.loads((tmp_path / MANIFEST).read_text())["format"] == FORMAT


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("splits"), "field 'splits' must be dict, got None"),
    (lambda m: m.update(seq_len="32"), "field 'seq_len' must be int, got '32'"),
    (lambda m: m.update(seq_len=True), "field 'seq_len' must be int, got True"),
    (lambda m: m["tokenizer"].pop("vocab_size"), "field 'tokenizer.vocab_size' must be int"),
    (lambda m: m["splits"]["train"]["shards"][1].pop("sha256"), "field 'splits.train.shards[1].sha256' must be str"),
    (lambda m: m["splits"]["val"].update(samples=None), "field 'splits.val.samples' must be int"),
    (lambda m: m.update(format="titans-packed-webdataset-v0"), "format 'titans-packed-webdataset-v0'; this code reads"),
])
def test_malformed_fields_are_named(tmp_path, change, message):
    record = _manifest().as_dict()
    change(record)
    (tmp_path / MANIFEST).write_text(json.dumps(record))
    with pytest.raises(ManifestError) as error:
        Manifest.read(str(tmp_path))
    assert str(error.value).startswith(str(tmp_path / MANIFEST))
    assert message in str(error.value)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json .make the shards with data_prep/tokenize.py"):
        Manifest.read(str(tmp_path))
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="manifest.json is unreadable"):
        Manifest.read(str(tmp_path))
