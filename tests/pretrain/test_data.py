"""titans_pretrain.data: the global order shared out to ranks, the (seed, epoch) order, exact resume at any
data-parallel size, the padding mask."""

import itertools
import json

import pytest

from titans_pretrain.data import DataError, ShardStream
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


def _steps(stream, steps):
    """The keys of ``steps`` global batches as this rank sees them, micro-batch by micro-batch."""
    per_step = stream.global_batch // (stream.dp_world * stream.micro_batch)
    batches = list(itertools.islice(stream, steps * per_step))
    return [[k for b in batches[i * per_step:(i + 1) * per_step] for k in b["keys"]] for i in range(steps)]


def global_batches(shards, world, steps, micro=2, global_batch=12, seed=7, start=None):
    """Each global batch's keys as the ``world`` ranks together read them (rank 0's slice first)."""
    streams = [ShardStream(str(shards), "train", r, world, micro, seed=seed, seq_length=SEQ, global_batch=global_batch)
               for r in range(world)]
    if start is not None:
        for s in streams:
            s.load_state_dict(start)
    per_rank = [_steps(s, steps) for s in streams]
    return [[k for rank in per_rank for k in rank[i]] for i in range(steps)], streams


def test_every_global_batch_holds_the_same_samples_at_any_data_parallel_size(shards):
    total = json.loads((shards / "manifest.json").read_text())["splits"]["train"]["samples"]
    steps = total // 12 + 2  # into the second epoch (each rank reads every shard: 1 + 3 streams)
    one, _ = global_batches(shards, 1, steps)
    assert global_batches(shards, 3, steps)[0] == one
    epoch = [k for batch in one for k in batch][:total]
    assert len(set(epoch)) == total  # an epoch holds every sample once


def test_resume_at_another_data_parallel_size_continues_at_the_next_sample(shards):
    whole, _ = global_batches(shards, 2, 30)
    _, stopped = global_batches(shards, 2, 11)
    state = json.loads(json.dumps(stopped[0].state_dict()))  # as saved in a checkpoint
    assert state["consumed"] == 11 * 12 and stopped[1].state_dict() == state
    for world in (1, 3):
        resumed, _ = global_batches(shards, world, 19, start=state)
        assert resumed == whole[11:], world


def test_order_depends_on_seed_and_epoch(shards):
    def first(seed, skip_epochs=0):
        s = ShardStream(str(shards), "train", 0, 1, 1, seed=seed, seq_length=SEQ)
        s.consumed = skip_epochs * s.samples_per_epoch
        return [b["keys"][0] for b in itertools.islice(s, 20)]

    assert first(1) == first(1)
    assert first(1) != first(2)
    assert first(1) != first(1, skip_epochs=1)


@pytest.mark.parametrize("split,rank,world,stop", [("train", 1, 2, 0), ("train", 1, 2, 3), ("train", 1, 2, 37),
                                                     ("val", 0, 1, 130)])
def test_resume_gives_the_same_batches(shards, split, rank, world, stop):
    """Stop after ``stop`` steps (across shard boundaries; the val case across epochs), reload, compare."""
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
        assert state["consumed"] >= first.samples_per_epoch, "the case meant to cross an epoch boundary did not"


def test_padding_is_masked(shards):
    stream = ShardStream(str(shards), "train", 0, 1, 1, seed=0, seq_length=SEQ)
    masks = [b["loss_mask"][0] for b in itertools.islice(stream, stream.samples_per_epoch)]
    partial = [m for m in masks if m.sum() < SEQ]
    assert partial, "a part's last window is padded"
    assert all(m[: int(m.sum())].all() and not m[int(m.sum()):].any() for m in partial)


def test_bad_configurations(shards):
    with pytest.raises(DataError, match=r"shards hold windows of seq_len 32, but the model's seq_length is 64"):
        ShardStream(str(shards), "train", 0, 1, 1, seed=0, seq_length=64)
    with pytest.raises(DataError, match=r"global batch 10 is not a whole number of micro-batches of 2 on each of 3"):
        ShardStream(str(shards), "train", 0, 3, 2, seed=0, seq_length=SEQ, global_batch=10)
    s = ShardStream(str(shards), "train", 0, 2, 1, seed=0, seq_length=SEQ)
    with pytest.raises(DataError, match=r"saved with seed 3, now 0"):
        s.load_state_dict({"consumed": 4, "seed": 3})
    with pytest.raises(DataError, match=r"per-rank sample order of an earlier version.*checkpoint.init_from"):
        s.load_state_dict({"epoch": 0, "position": 5, "dp_rank": 0, "dp_world": 3, "seed": 0})
