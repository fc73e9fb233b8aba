"""Training batches from data_prep's shards: one data-parallel rank's share of each global batch, in
an order that does not depend on the data-parallel size, resumable at the exact sample.

The stream: epoch after epoch, the split's shards permuted by (seed, epoch), each shard's samples
permuted by (seed, epoch, shard). Global batch s is the stream's samples [s G, (s + 1) G), G the global
batch; data-parallel rank r of D takes its r-th contiguous slice of G / D samples, in micro-batches. So
every global batch holds the same samples (in the same micro-batches, at a fixed micro-batch size)
whatever D, and the position is one number, the samples consumed: a run saved at one data-parallel
size resumes at another at exactly the next sample. Tensor-parallel ranks of one replica pass the same
data-parallel rank and so read the same samples. A rank reads only its own samples: each shard's
member headers are indexed once, then a sample's members are read alone (titans_data_prep.shards.ShardReader).
"""

import os
from typing import Dict, Iterator, Optional

import numpy as np
import torch

from titans_data_prep.manifest import Manifest, ManifestError
from titans_data_prep.shards import ShardReader


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
                 seq_length: int, manifest: Optional[Manifest] = None, global_batch: Optional[int] = None):
        """``global_batch``: samples per optimizer step over all data-parallel ranks (default: one micro-batch
        per rank); ``manifest``: the directory's manifest when the caller has read it already."""
        manifest = manifest or read_manifest(directory)
        if manifest.seq_len != seq_length:
            raise DataError(f"{directory}: shards hold windows of seq_len {manifest.seq_len}, but the model's "
                            f"seq_length is {seq_length} (retokenize with --seq-len {seq_length}, or set seq_length)")
        if split not in manifest.splits or not manifest.splits[split].shards:
            raise DataError(f"{directory}: no {split!r} shards (splits: {sorted(manifest.splits)})")
        global_batch = global_batch or micro_batch * dp_world
        if global_batch % (micro_batch * dp_world):
            raise DataError(f"global batch {global_batch} is not a whole number of micro-batches of {micro_batch} on "
                            f"each of {dp_world} data-parallel ranks")
        self.directory, self.split, self.shards = directory, split, manifest.splits[split].shards
        self.dp_rank, self.dp_world, self.micro_batch, self.seed = dp_rank, dp_world, micro_batch, seed
        self.global_batch = global_batch
        self.samples_per_epoch = sum(shard.samples for shard in self.shards)
        self.consumed = 0  # samples of the stream in the global batches handed out (all ranks together)
        self._epoch_index, self._cached = None, {}

    def state_dict(self) -> Dict[str, int]:
        return {"consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if "consumed" not in state:
            raise DataError("the data position was saved by the per-rank sample order of an earlier version, which "
                            "cannot be continued exactly; start a new checkpoint.dir with checkpoint.init_from pointing "
                            "at this checkpoint (its weights, and optimizer state with checkpoint.init_optimizer)")
        if state["seed"] != self.seed:
            raise DataError(f"data position saved with seed {state['seed']}, now {self.seed}: the sample order "
                            "differs, so the position cannot be resumed exactly")
        self.consumed = state["consumed"]

    def _epoch_order(self, epoch: int):
        """(shard indices in the epoch's order, the stream offset where each starts)."""
        if self._epoch_index is None or self._epoch_index[0] != epoch:
            order = [int(i) for i in _rng(self.seed, epoch).permutation(len(self.shards))]
            starts = np.cumsum([0] + [self.shards[i].samples for i in order])
            self._epoch_index = (epoch, order, starts)
        return self._epoch_index[1], self._epoch_index[2]

    def _shard(self, epoch: int, index: int):
        """(reader, the epoch's sample order) of a shard; the last two kept open."""
        key = (epoch, index)
        if key not in self._cached:
            reader = ShardReader(os.path.join(self.directory, self.split, self.shards[index].name))
            order = _rng(self.seed, epoch, index).permutation(len(reader))
            for old in list(self._cached)[:-1]:
                self._cached.pop(old)[0].close()
            self._cached[key] = (reader, order)
        return self._cached[key]

    def sample(self, position: int) -> tuple:
        """(key, tokens, valid) at ``position`` of the stream."""
        epoch, offset = divmod(position, self.samples_per_epoch)
        order, starts = self._epoch_order(epoch)
        slot = int(np.searchsorted(starts, offset, side="right")) - 1
        reader, samples = self._shard(epoch, order[slot])
        key, tokens, meta = reader[int(samples[offset - int(starts[slot])])]
        return key, tokens, meta["valid"]

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        """Batches: ``tokens`` [micro_batch, seq_len + 1] int64, ``loss_mask`` [micro_batch, seq_len]
        (0 on the targets that are EOS padding of a part's last window) and the samples' ``keys``."""
        share = self.global_batch // self.dp_world
        while True:
            first = self.consumed + self.dp_rank * share
            for start in range(first, first + share, self.micro_batch):
                batch = [self.sample(p) for p in range(start, start + self.micro_batch)]
                if start + self.micro_batch == first + share:  # the step's last micro-batch: the position moves on
                    self.consumed += self.global_batch
                ids = torch.from_numpy(np.stack([t.astype(np.int64) for _, t, _ in batch]))
                positions = torch.arange(ids.shape[1] - 1)
                mask = torch.stack([(positions < v - 1).float() for _, _, v in batch])
                yield {"tokens": ids, "loss_mask": mask, "keys": [k for k, _, _ in batch]}
