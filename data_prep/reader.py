"""Reading a shard set back: the shards of a split, divided between data-parallel ranks.

webdataset's default node splitter divides shards by the global rank, which under tensor parallelism
hands different samples to the ranks of one model replica. Here the split is by data-parallel rank:
rank r of ``world`` replicas reads shards r, r + world, ... of the manifest's list (disjoint, and
together complete); the tensor-parallel ranks of a replica pass the same data-parallel rank.
"""

import os
from typing import List

from titans_data_prep.manifest import Manifest


def shard_paths(directory: str, split: str) -> List[str]:
    splits = Manifest.read(directory).splits
    if split not in splits:
        raise KeyError(f"{directory}: no split {split!r}; it has {sorted(splits)}")
    return [os.path.join(directory, split, s.name) for s in splits[split].shards]


def rank_shards(paths: List[str], dp_rank: int, dp_world: int) -> List[str]:
    if not 0 <= dp_rank < dp_world:
        raise ValueError(f"data-parallel rank {dp_rank} outside [0, {dp_world})")
    return paths[dp_rank::dp_world]


def webdataset_for_rank(directory: str, split: str, dp_rank: int, dp_world: int):
    """A ``webdataset.WebDataset`` over this rank's shards, decoded to (key, tokens, meta) tuples."""
    import webdataset as wds

    mine = rank_shards(shard_paths(directory, split), dp_rank, dp_world)
    return (wds.WebDataset(mine, nodesplitter=None, workersplitter=wds.split_by_worker, shardshuffle=False,
                           empty_check=False)
            .decode()
            .to_tuple("__key__", "tokens.npy", "json"))
