"""JSON-lines files: every way a file can be unreadable is an EvalInputError naming the file and, where
known, the line and column."""

import gzip
import re

import pytest

from titans_eval_suite import jsonl
from titans_eval_suite.errors import EvalInputError


def read(path):
    return list(jsonl.rows(str(path), "DATA"))


@pytest.mark.parametrize("content, where", [
    (b"\xff\xfe{\x00}\x00\n", "line 1: not UTF-8 (byte 0xff at column 1)"),  # UTF-16 with its byte-order mark
    (b'{"text": "fine"}\n\n{"text": "caf\xe9"}\n', "line 3: not UTF-8 (byte 0xe9 at column 14)"),  # Latin-1
    (b'{"text": "a\tb"}\n', "line 1: not JSON (Invalid control character at column 12)"),
    (b'{"text": "a"}\n[1, 2]\n', "line 2: expected a JSON object"),
])
def test_bad_lines_are_named(tmp_path, content, where):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(EvalInputError, match=re.escape(f"DATA: {path} {where}")):
        read(path)


def test_bad_gzip_is_named(tmp_path):
    whole = gzip.compress(b"".join(b'{"text": "row %d"}\n' % i for i in range(2000)))
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(whole[:len(whole) // 2])  # cut short: EOFError from gzip
    with pytest.raises(EvalInputError, match=re.escape(f"DATA: {path}: unreadable after line ") + r"\d+ \(EOFError"):
        read(path)
    path.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(EvalInputError, match=re.escape(f"DATA: {path}: unreadable (BadGzipFile")):
        read(path)
    path.write_bytes(gzip.compress(b'{"text": "caf\xe9"}\n'))
    with pytest.raises(EvalInputError, match=re.escape(f"{path} line 1: not UTF-8")):
        read(path)
