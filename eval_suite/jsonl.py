"""JSON-lines data files, read with errors that name the file and line."""

import gzip
import json
import zlib
from typing import Iterator, Optional, Tuple

from titans_eval_suite.errors import EvalInputError


def rows(path: str, what: str, limit: Optional[int] = None) -> Iterator[Tuple[int, dict]]:
    """(line number, object) per non-blank line of ``path`` (``.gz`` decompressed), the first ``limit``;
    ``what`` names the data in errors ("LAMBADA: FILE line 3: not JSON"). Lines are decoded one at a
    time, so a byte that is not UTF-8 is named by its line and column."""
    opener = gzip.open if path.endswith(".gz") else open
    count, number = 0, 0
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if limit is not None and count >= limit:
                    return
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise EvalInputError(f"{what}: {path} line {number}: not UTF-8 (byte 0x{raw[e.start]:02x} at "
                                         f"column {e.start + 1})") from e
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:  # some messages end in " at", where json puts the position
                    raise EvalInputError(f"{what}: {path} line {number}: not JSON ({e.msg.removesuffix(' at')} at "
                                         f"column {e.colno})") from e
                if not isinstance(row, dict):
                    raise EvalInputError(f"{what}: {path} line {number}: expected a JSON object")
                count += 1
                yield number, row
    except (OSError, EOFError, zlib.error) as e:  # gzip: BadGzipFile (an OSError), truncated (EOFError), bad data
        where = f" after line {number}" if number else ""
        raise EvalInputError(f"{what}: {path}: unreadable{where} ({type(e).__name__}: {e})") from e
