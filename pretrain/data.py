"""Training batches from data_prep's shards: one data-parallel rank's share, shuffled by (seed, epoch),
resumable at the exact sample.

Order of an epoch: the split's shards are permuted by (seed, epoch) and dealt round-robin to the
data-parallel ranks (disjoint, together complete); a rank reads its shards in that order, each
shard's samples permuted by (seed, epoch, shard). Tensor-parallel ranks of one replica pass the same
data-parallel rank and so read the same samples. A rank whose shards run out starts its next epoch by
itself: the stream never ends and needs no collective. ``state_dict`` is (epoch, samples consumed in
the epoch); loading it skips whole shards by the manifest's counts and then samples within one, so a
resumed run sees exactly the batches an uninterrupted run would (with the same data-parallel size).
"""

import os
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

from data_prep.manifest import Manifest, ManifestError
from data_prep.shards import read_shard


class DataError(Exception):
    pass


def read_manifest(directory: str) -> Manifest:
    """The shard set's manifest; a missing or malformed one is a DataError naming the file and field."""
    try:
        return Manifest.read(directory)
    except ManifestError as e:
        raise DataError(str(e)) from e


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


class ShardStream:
    def __init__(self, directory: str, split: str, dp_rank: int, dp_world: int, micro_batch: int, seed: int,
                 seq_length: int, manifest: Optional[Manifest] = None):
        """``manifest``: the directory's manifest when the caller has read it already."""
        manifest = manifest or read_manifest(directory)
        if manifest.seq_len != seq_length:
            raise DataError(f"{directory}: shards hold windows of seq_len {manifest.seq_len}, but the model's "
                            f"seq_length is {seq_length} (retokenize with --seq-len {seq_length}, or set seq_length)")
        if split not in manifest.splits or not manifest.splits[split].shards:
            raise DataError(f"{directory}: no {split!r} shards (splits: {sorted(manifest.splits)})")
        shards = manifest.splits[split].shards
        if len(shards) < dp_world:
            raise DataError(f"{directory}: {len(shards)} {split} shards for {dp_world} data-parallel ranks; every rank "
                            "needs one (fewer --seqs-per-shard makes more shards)")
        self.directory, self.split, self.shards = directory, split, shards
        self.dp_rank, self.dp_world, self.micro_batch, self.seed = dp_rank, dp_world, micro_batch, seed
        self.epoch, self.position = 0, 0  # samples of this epoch already handed out

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "dp_rank": self.dp_rank, "dp_world": self.dp_world,
                "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        for key in ("dp_world", "seed"):
            if state[key] != getattr(self, key):
                raise DataError(f"data position saved with {key} {state[key]}, now {getattr(self, key)}: the sample "
                                "order differs, so the position cannot be resumed exactly")
        self.epoch, self.position = state["epoch"], state["position"]

    def _epoch_shards(self, epoch: int) -> List[int]:
        order = _rng(self.seed, epoch).permutation(len(self.shards))
        return [int(i) for i in order[self.dp_rank :: self.dp_world]]

    def _samples(self) -> Iterator[tuple]:
        """(key, tokens, valid) from the current position on, epoch after epoch."""
        while True:
            skip = self.position
            for index in self._epoch_shards(self.epoch):
                n = self.shards[index].samples
                if skip >= n:
                    skip -= n
                    continue
                samples = list(read_shard(os.path.join(self.directory, self.split, self.shards[index].name)))
                order = _rng(self.seed, self.epoch, index).permutation(len(samples))
                for j in order[skip:]:
                    key, tokens, meta = samples[j]
                    self.position += 1
                    yield key, tokens, meta["valid"]
                skip = 0
            self.epoch, self.position = self.epoch + 1, 0

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        """Batches: ``tokens`` [micro_batch, seq_len + 1] int64, ``loss_mask`` [micro_batch, seq_len]
        (0 on the targets that are EOS padding of a part's last window) and the samples' ``keys``."""
        batch = []
        for key, tokens, valid in self._samples():
            batch.append((key, tokens, valid))
            if len(batch) == self.micro_batch:
                ids = torch.from_numpy(np.stack([t.astype(np.int64) for _, t, _ in batch]))
                positions = torch.arange(ids.shape[1] - 1)
                mask = torch.stack([(positions < v - 1).float() for _, _, v in batch])
                yield {"tokens": ids, "loss_mask": mask, "keys": [k for k, _, _ in batch]}
                batch = []
