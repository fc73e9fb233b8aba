"""Cutting the input into parts: the unit of work, of parallelism and of resumption.

A part is a range of rows of one source file and belongs to one split. Parts are defined by the row
counts alone (never by the worker count), so any number of workers, and any number of interrupted
runs, produce the same parts and therefore the same shards. ``--val-docs N`` holds out the first N
rows in input order, ``--max-docs M`` keeps the first M rows (both count source rows, skipped ones
included).
"""

from dataclasses import asdict, dataclass
from typing import List, Optional


@dataclass(frozen=True)
class Part:
    index: int
    split: str
    source: int     # index into the manifest's sources
    path: str
    start: int      # rows [start, stop) of that file
    stop: int

    def as_dict(self):
        return asdict(self)


def plan_parts(paths: List[str], rows: List[Optional[int]], val_docs: int, max_docs: Optional[int],
               docs_per_part: int) -> List[Part]:
    """``rows[i]`` is None for a file left out (unreadable, with --skip-bad-files)."""
    parts: List[Part] = []
    budget = max_docs if max_docs is not None else float("inf")
    taken = 0
    for source, (path, n) in enumerate(zip(paths, rows)):
        if n is None:
            continue
        row = 0
        while row < n and taken < budget:
            split = "val" if taken < val_docs else "train"
            limit = val_docs - taken if split == "val" else budget - taken
            stop = int(min(n, row + docs_per_part, row + limit))
            parts.append(Part(len(parts), split, source, path, row, stop))
            taken += stop - row
            row = stop
    return parts
