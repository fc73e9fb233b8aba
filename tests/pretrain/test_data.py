"""pretrain.data: the rank split, the (seed, epoch) order, exact resume, the padding mask."""

import itertools
import json

import pytest

from pretrain.data import DataError, ShardStream
from tests.helpers import CORPUS, run_cli

pytestmark = pytest.mark.process  # the shards fixture runs data_prep: not in make test-fast

SEQ = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_data")
    run_cli("train_tokenizer.py", "--input", CORPUS, "--vocab-size", 600, "--output", root / "tok.model")
    run_cli("tokenize.py", "--input", CORPUS, "--tokenizer", root / "tok.model", "--output", root / "shards",
            "--seq-len", SEQ, "--seqs-per-shard", 50, "--docs-per-part", 40, "--val-docs", 5, "--workers", 1)
    return root / "shards"


def test_ranks_are_disjoint_and_complete_every_epoch(shards):
    total = json.loads((shards / "manifest.json").read_text())["splits"]["train"]["samples"]
    for world in (1, 2, 3):
        streams = [ShardStream(str(shards), "train", r, world, 1, seed=7, seq_length=SEQ) for r in range(world)]
        per_rank = [[b["keys"][0] for b in itertools.islice(s, _rank_samples(s))] for s in streams]
        seen = [d for rank in per_rank for d in rank]
        assert len(seen) == total and len(set(seen)) == total


def _rank_samples(stream):
    return sum(stream.shards[i].samples for i in stream._epoch_shards(stream.epoch))


def test_order_depends_on_seed_and_epoch(shards):
    def first(seed, skip_epochs=0):
        s = ShardStream(str(shards), "train", 0, 1, 1, seed=seed, seq_length=SEQ)
        s.epoch = skip_epochs
        return [b["keys"][0] for b in itertools.islice(s, 20)]

    assert first(1) == first(1)
    assert first(1) != first(2)
    assert first(1) != first(1, skip_epochs=1)


@pytest.mark.parametrize("split,rank,world,stop", [("train", 1, 2, 0), ("train", 1, 2, 3), ("train", 1, 2, 37),
                                                     ("val", 0, 1, 130)])
def test_resume_gives_the_same_batches(shards, split, rank, world, stop):
    """Stop after ``stop`` batches (across shard boundaries; the val case across epochs), reload, compare."""
    make = lambda: ShardStream(str(shards), split, rank, world, 4, seed=3, seq_length=SEQ)  # noqa: E731
    reference = [b for b in itertools.islice(make(), stop + 25)]
    first = make()
    it = iter(first)
    for _ in range(stop):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # as saved in a checkpoint
    resumed = make()
    resumed.load_state_dict(state)
    after = [b for b in itertools.islice(resumed, 25)]
    assert [b["keys"] for b in after] == [b["keys"] for b in reference[stop:]]
    assert all((a["tokens"] == b["tokens"]).all() for a, b in zip(after, reference[stop:]))
    if split == "val":
        assert state["epoch"] >= 1, "the case meant to cross an epoch boundary did not"


def test_padding_is_masked(shards):
    stream = ShardStream(str(shards), "train", 0, 1, 1, seed=0, seq_length=SEQ)
    masks = [b["loss_mask"][0] for b in itertools.islice(stream, _rank_samples(stream))]
    partial = [m for m in masks if m.sum() < SEQ]
    assert partial, "a part's last window is padded"
    assert all(m[: int(m.sum())].all() and not m[int(m.sum()):].any() for m in partial)


def test_bad_configurations(shards):
    with pytest.raises(DataError, match=r"shards hold windows of seq_len 32, but the model's seq_length is 64"):
        ShardStream(str(shards), "train", 0, 1, 1, seed=0, seq_length=64)
    with pytest.raises(DataError, match=r"\d+ train shards for 1000 data-parallel ranks; every rank needs one"):
        ShardStream(str(shards), "train", 0, 1000, 1, seed=0, seq_length=SEQ)
    s = ShardStream(str(shards), "train", 0, 2, 1, seed=0, seq_length=SEQ)
    with pytest.raises(DataError, match=r"saved with dp_world 3, now 2"):
        s.load_state_dict({"epoch": 0, "position": 5, "dp_rank": 0, "dp_world": 3, "seed": 0})
