"""Input files: which ones a SRC argument names, how many rows each holds, and their texts, streamed.

Parquet is read one row group at a time and jsonl (optionally gzip-compressed) one line at a time, so
memory stays bounded whatever the file size. Problems are reported with the file (and row or line)
they come from: ``SourceError`` for a file that cannot be used at all, per-row ``Skip`` records for
rows that are left out (null or empty text, a malformed JSON line) or repaired (invalid UTF-8).
"""

import glob
import gzip
import json
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz")
HUB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class SourceError(Exception):
    """A source file that cannot be read as asked (the message names it)."""


class MissingColumn(SourceError):
    """The text column is not in a file: a wrong --text-column, which --skip-bad-files does not skip
    (it would skip every file)."""


@dataclass(frozen=True)
class Skip:
    row: int
    reason: str   # "null text", "empty text", "invalid UTF-8 (replaced)", "malformed JSON: ..."
    kept: bool    # True when the row was repaired and kept


def kind_of(path: str) -> Optional[str]:
    for suffix in SUFFIXES:
        if path.endswith(suffix):
            return suffix.lstrip(".")
    return None


def looks_like_hub_id(src: str) -> bool:
    parts = src.split("/")
    return (len(parts) == 2 and all(parts) and not os.path.exists(src)
            and all(set(p) <= HUB_ID_CHARS for p in parts) and not any(c in src for c in "*?["))


def list_files(src: str) -> List[str]:
    """The local files a SRC names: a file, a directory (recursively) or a glob; sorted."""
    if os.path.isfile(src):
        if kind_of(src) is None:
            raise SourceError(f"{src}: not a supported input (expected one of {', '.join(SUFFIXES)})")
        return [src]
    if os.path.isdir(src):
        found = [os.path.join(root, name) for root, _, names in os.walk(src) for name in names if kind_of(name)]
        if not found:
            raise SourceError(f"{src}: directory holds no {', '.join(SUFFIXES)} files")
        return sorted(found)
    matches = sorted(p for p in glob.glob(src, recursive=True) if os.path.isfile(p) and kind_of(p))
    if not matches:
        raise SourceError(f"{src}: no such file or directory, and no {', '.join(SUFFIXES)} files match it as a glob")
    return matches


def _open_lines(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _parquet(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:
        raise SourceError(f"{path}: unreadable parquet file ({type(e).__name__}: {e})") from e


def count_rows(path: str, text_column: str) -> int:
    """Rows of a file, checking that it opens and holds ``text_column`` (parquet: from the footer)."""
    if kind_of(path) == "parquet":
        pf = _parquet(path)
        names = pf.schema_arrow.names
        if text_column not in names:
            raise MissingColumn(f"{path}: no column {text_column!r}; its columns are {names} (--text-column)")
        return pf.metadata.num_rows
    try:
        with _open_lines(path) as f:
            return sum(1 for line in f if line.strip())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise SourceError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def _text_of(value, row: int, skips: List[Skip]) -> Optional[str]:
    if value is None:
        skips.append(Skip(row, "null text", False))
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("utf-8", errors="replace")
            skips.append(Skip(row, "invalid UTF-8 (replaced)", True))
    if not isinstance(value, str):
        skips.append(Skip(row, f"text is {type(value).__name__}, not a string", False))
        return None
    if not value.strip():
        skips.append(Skip(row, "empty text", False))
        return None
    return value


def read_texts(path: str, text_column: str, start: int, stop: int, skip_bad: bool
               ) -> Iterator[Tuple[int, Optional[str], List[Skip]]]:
    """(row, text or None, skips of that row) for rows [start, stop) of a file, streamed.

    Rows count non-blank lines of a jsonl file and records of a parquet file, from 0."""
    if kind_of(path) == "parquet":
        yield from _read_parquet(path, text_column, start, stop, skip_bad)
    else:
        yield from _read_jsonl(path, text_column, start, stop, skip_bad)


def _read_parquet(path, text_column, start, stop, skip_bad):
    pf = _parquet(path)
    first = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if first + n <= start or first >= stop:
            first += n
            continue
        try:
            values = pf.read_row_group(g, columns=[text_column]).column(0).to_pylist()
        except Exception as e:
            if not skip_bad:
                raise SourceError(f"{path}: row group {g} (rows {first}-{first + n - 1}) unreadable "
                                  f"({type(e).__name__}: {e}); --skip-bad-files records it and goes on") from e
            for row in range(max(first, start), min(first + n, stop)):
                yield row, None, [Skip(row, f"unreadable row group {g}: {type(e).__name__}", False)]
            first += n
            continue
        for i, value in enumerate(values):
            row = first + i
            if start <= row < stop:
                skips: List[Skip] = []
                yield row, _text_of(value, row, skips), skips
        first += n


def _read_jsonl(path, text_column, start, stop, skip_bad):
    row = -1
    try:
        with _open_lines(path) as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                row += 1
                if row < start:
                    continue
                if row >= stop:
                    return
                skips: List[Skip] = []
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    line = raw.decode("utf-8", errors="replace")
                    skips.append(Skip(row, "invalid UTF-8 (replaced)", True))
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    if not skip_bad:
                        raise SourceError(f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno}); "
                                          "--skip-bad-files records such rows and goes on") from e
                    yield row, None, skips + [Skip(row, f"malformed JSON: {e.msg}", False)]
                    continue
                if not isinstance(record, dict) or text_column not in record:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise SourceError(f"{path}:{line_no}: no field {text_column!r}; the record has {keys}")
                yield row, _text_of(record[text_column], row, skips), skips
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise SourceError(f"{path}: unreadable after row {row} ({type(e).__name__}: {e})") from e
