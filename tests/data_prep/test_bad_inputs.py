"""Bad input: clear errors naming the file / row / field; with --skip-bad-files, recorded instead."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import CORPUS, corpus_docs, run_cli, tokenize

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def _jsonl(path, records, compress=False):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_missing_text_column_names_the_columns(tokenizer, tmp_path):
    src = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": ["x"], "id": [1]}), src)
    proc = tokenize(tokenizer, src, tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert f"{src}: no column 'text'; its columns are ['content', 'id']" in proc.stderr
    proc = tokenize(tokenizer, src, tmp_path / "out_skip", "--skip-bad-files", check=False)
    assert proc.returncode == 2 and "no column 'text'" in proc.stderr  # a wrong --text-column is not a bad file
    js = _jsonl(tmp_path / "b.jsonl", [{"text": "fine"}, {"body": "no text here", "id": 2}])
    proc = tokenize(tokenizer, js, tmp_path / "out2", check=False)
    assert proc.returncode == 2 and f"{js}:2: no field 'text'; the record has ['body', 'id']" in proc.stderr


def test_null_empty_and_invalid_utf8_are_counted(tokenizer, tmp_path):
    src = tmp_path / "mixed.jsonl"
    good = corpus_docs()[0]["text"]
    lines = [json.dumps({"text": good}).encode(), json.dumps({"text": None}).encode(), json.dumps({"text": "  "}).encode(),
             b'{"text": "caf\xe9 au lait"}', json.dumps({"text": good}).encode()]
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    tokenize(tokenizer, src, out)
    m = _manifest(out)
    assert m["skipped"]["counts"] == {"null text": 1, "empty text": 1, "invalid UTF-8 (replaced)": 1}
    assert {(r["row"], r["reason"], r["kept"]) for r in m["skipped"]["rows"]} == {
        (1, "null text", False), (2, "empty text", False), (3, "invalid UTF-8 (replaced)", True)}
    assert m["splits"]["train"]["documents"] == 3 and m["sources"][0]["rows"] == 5


def test_corrupt_files_stop_the_run_or_are_recorded(tokenizer, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _jsonl(src / "a.jsonl", [{"text": d["text"]} for d in corpus_docs()[:10]])
    (src / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n' * 50)[:40])  # truncated
    (src / "c.parquet").write_bytes(b"PAR1 this is not parquet")
    proc = tokenize(tokenizer, src, tmp_path / "out", check=False)
    assert proc.returncode == 2 and f"{src / 'b.jsonl.gz'}: unreadable" in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
    out = tmp_path / "out"  # the same output: the error's advice, taken
    tokenize(tokenizer, src, out, "--skip-bad-files")
    sources = {s["path"].rsplit("/", 1)[1]: s for s in _manifest(out)["sources"]}
    assert sources["a.jsonl"]["status"] == "ok" and sources["a.jsonl"]["rows"] == 10
    assert sources["b.jsonl.gz"]["status"].startswith("skipped:") and sources["b.jsonl.gz"]["rows"] is None
    assert "unreadable parquet file" in sources["c.parquet"]["status"]
    run_cli("verify.py", out)


def test_malformed_json_line(tokenizer, tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "one"}\n{"text": "two"\n{"text": "three"}\n')
    proc = tokenize(tokenizer, src, tmp_path / "out", check=False)
    assert proc.returncode == 2 and f"{src}:2: malformed JSON" in proc.stderr
    tokenize(tokenizer, src, tmp_path / "out", "--skip-bad-files")  # the same output, resumed with the flag
    m = _manifest(tmp_path / "out")
    assert m["splits"]["train"]["documents"] == 2
    assert [r["reason"].split(":")[0] for r in m["skipped"]["rows"]] == ["malformed JSON"]


@pytest.mark.parametrize("case", ["missing", "invalid"])
def test_bad_tokenizer_file(tmp_path, case):
    model = tmp_path / "tok.model"
    if case == "invalid":
        model.write_bytes(b"not a sentencepiece model")
    proc = tokenize(model, CORPUS, tmp_path / "out", check=False)
    assert proc.returncode == 2
    expected = "no such file" if case == "missing" else "not a valid sentencepiece model"
    assert f"tokenizer {model}: {expected}" in proc.stderr


def test_missing_input_and_foreign_output(tokenizer, tmp_path):
    proc = tokenize(tokenizer, tmp_path / "nope", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "no such file or directory" in proc.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    proc = tokenize(tokenizer, CORPUS, foreign, check=False)
    assert proc.returncode == 2 and "holds files that are not from this tool" in proc.stderr
    assert (foreign / "notes.txt").read_text() == "mine"


def test_hub_id_offline_is_a_clear_error(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline at once, as a cluster's compute node is (no network timeouts)
    proc = tokenize(tokenizer, "HuggingFaceFW/fineweb-edu", tmp_path / "out", "--hf-config", "sample-100BT", check=False)
    assert proc.returncode == 2
    assert "HuggingFaceFW/fineweb-edu" in proc.stderr
    assert ("huggingface_hub" in proc.stderr) or ("cannot list the hub dataset" in proc.stderr and "--local-dir" in proc.stderr)


def test_unreadable_row_group(tokenizer, tmp_path):
    """A parquet file whose footer is fine but whose second row group's data is garbage."""
    src = tmp_path / "rg.parquet"
    texts = [d["text"] for d in corpus_docs()[:20]]
    pq.write_table(pa.table({"text": texts}), src, row_group_size=10, compression="snappy", use_dictionary=False)
    meta = pq.ParquetFile(src).metadata.row_group(1).column(0)
    data = bytearray(src.read_bytes())
    start = meta.data_page_offset
    data[start + 8 : start + meta.total_compressed_size - 8] = b"\x07" * (meta.total_compressed_size - 16)
    src.write_bytes(bytes(data))
    proc = tokenize(tokenizer, src, tmp_path / "out", check=False)
    assert proc.returncode == 2 and f"{src}: row group 1 (rows 10-19) unreadable" in proc.stderr
    out = tmp_path / "skipping"
    tokenize(tokenizer, src, out, "--skip-bad-files")
    m = _manifest(out)
    assert m["splits"]["train"]["documents"] == 10
    assert m["skipped"]["counts"] == {"unreadable row group 1: " + m["skipped"]["rows"][0]["reason"].split(": ", 1)[1]: 10}
    assert sorted(r["row"] for r in m["skipped"]["rows"]) == list(range(10, 20))


def test_hf_config_needs_a_hub_id(tokenizer, tmp_path):
    proc = tokenize(tokenizer, CORPUS, tmp_path / "out", "--hf-config", "sample-10BT", check=False)
    assert proc.returncode == 2 and "--hf-config applies to hub dataset ids" in proc.stderr
