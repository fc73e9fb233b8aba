"""Packing documents into training windows.

A part's documents, each BOS + tokens + EOS, are concatenated into one stream and cut into windows of
``seq_len + 1`` tokens that overlap by one (stride ``seq_len``): window i holds stream tokens
[i * seq_len, (i + 1) * seq_len], so its inputs are [:-1] and its targets [1:], and every token of the
stream after the first is a target exactly once. The stream's last window is padded with EOS up to
``seq_len + 1``; its metadata says how many tokens are real (``valid``), so nothing is dropped.

Each window's metadata: ``doc_starts`` (offsets in the window where a document's BOS sits), ``docs``
([source, row] of every document with tokens in the window, in order) and ``valid``.
"""

from typing import Iterable, Iterator, List, Tuple

import numpy as np


class Packer:
    def __init__(self, seq_len: int, bos_id: int, eos_id: int, dtype):
        self.seq_len, self.bos, self.eos, self.dtype = seq_len, bos_id, eos_id, dtype
        self.buf: List[np.ndarray] = []    # token pieces not yet emitted (the stream from self.start)
        self.buf_len = 0
        self.start = 0                     # stream position of the first buffered token
        self.docs: List[Tuple[int, int, int]] = []  # (stream start, source, row) of documents not yet finished

    def add(self, tokens: Iterable[int], source: int, row: int) -> Iterator[Tuple[np.ndarray, dict]]:
        """Append one document; yields the windows it completes."""
        doc = np.empty(len(tokens) + 2, dtype=self.dtype)
        doc[0], doc[1:-1], doc[-1] = self.bos, tokens, self.eos
        self.docs.append((self.start + self.buf_len, source, row))
        self.buf.append(doc)
        self.buf_len += len(doc)
        while self.buf_len >= self.seq_len + 1:
            yield self._emit(self.seq_len + 1)

    def finish(self) -> Iterator[Tuple[np.ndarray, dict]]:
        """The last window (padded with EOS) if any token is left that is not yet a target."""
        if self.buf_len > 1 or (self.buf_len == 1 and self.start == 0):
            yield self._emit(self.buf_len)

    def _emit(self, valid: int):
        stream = np.concatenate(self.buf) if len(self.buf) > 1 else self.buf[0]
        window = np.full(self.seq_len + 1, self.eos, dtype=self.dtype)
        window[:valid] = stream[:valid]
        lo, hi = self.start, self.start + valid
        meta = {"doc_starts": [s - lo for s, _, _ in self.docs if lo <= s < hi],
                "docs": [[src, row] for s, src, row in self.docs if s < hi],
                "valid": valid}
        # Keep the window's last token: it is the first input of the next window.
        keep_from = valid - 1 if valid == self.seq_len + 1 else valid
        rest = stream[keep_from:]
        self.buf, self.buf_len, self.start = ([rest] if len(rest) else []), len(rest), self.start + keep_from
        # Documents that ended before the kept tokens are done.
        ends = [s for s, _, _ in self.docs[1:]] + [lo + len(stream)]
        self.docs = [d for d, end in zip(self.docs, ends) if end > self.start]
        return window, meta
