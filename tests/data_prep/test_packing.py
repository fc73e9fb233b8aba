"""Packing: windows of seq_len + 1 overlapping by one give back the document stream exactly."""

import numpy as np
import pytest

from titans_data_prep.packing import Packer


def _pack(docs, seq_len):
    packer = Packer(seq_len, 1, 2, np.uint16)
    windows = []
    for row, doc in enumerate(docs):
        windows += list(packer.add(doc, 7, row))
    return windows + list(packer.finish())


@pytest.mark.parametrize("seed", range(8))
def test_windows_rebuild_the_stream(seed):
    rng = np.random.default_rng(seed)
    seq_len = int(rng.integers(1, 40))
    docs = [list(rng.integers(3, 100, int(rng.integers(0, 90)))) for _ in range(int(rng.integers(1, 30)))]
    windows = _pack(docs, seq_len)
    assert all(w.shape == (seq_len + 1,) and w.dtype == np.uint16 for w, _ in windows)
    assert all(m["valid"] == seq_len + 1 for _, m in windows[:-1])
    stream = list(windows[0][0][: windows[0][1]["valid"]])
    for w, m in windows[1:]:
        assert w[0] == stream[-1]  # overlap by one token
        stream += list(w[1 : m["valid"]])
    assert stream == [t for doc in docs for t in [1, *doc, 2]]
    last, meta = windows[-1]
    assert np.all(last[meta["valid"]:] == 2)  # padding is EOS
    for w, m in windows:
        assert all(w[s] == 1 for s in m["doc_starts"])
    # every document is listed (source, row) in the windows that hold its tokens, in order
    listed = [tuple(d) for _, m in windows for d in m["docs"]]
    assert sorted(set(listed), key=lambda d: d[1]) == [(7, r) for r in range(len(docs))]
