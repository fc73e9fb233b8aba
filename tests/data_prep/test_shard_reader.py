"""titans_data_prep.shards.ShardReader: any sample of a shard by index, equal to what read_shard yields in order;
an incomplete shard refused by name."""

import io
import tarfile

import numpy as np
import pytest

from titans_data_prep.shards import ShardReader, read_shard, write_shard


def _samples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"doc{i:04d}", rng.integers(0, 600, 9).astype(np.uint16), {"valid": int(rng.integers(1, 10))})
            for i in range(n)]


def test_random_access_equals_sequential_reading(tmp_path):
    path = str(tmp_path / "s.tar")
    write_shard(path, _samples(37))
    sequential = list(read_shard(path))
    reader = ShardReader(path)
    assert len(reader) == 37
    for index in np.random.default_rng(1).permutation(37):
        key, tokens, meta = reader[int(index)]
        want = sequential[int(index)]
        assert key == want[0] and np.array_equal(tokens, want[1]) and meta == want[2]
    reader.close()


def test_an_incomplete_shard_is_named(tmp_path):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("doc0001.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ValueError, match=r"bad.tar: incomplete samples \['doc0001'\]"):
        ShardReader(str(path))
