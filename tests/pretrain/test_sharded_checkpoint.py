"""The sharded checkpoint in one process: flat ranges as boxes against a brute-force reference, a
distributed optimizer's flat ranges through SwiGLU's two halves saved and read back whole (and the
reverse), exact round trips of model and AdamW for every variant, the previous format still loading,
and damaged checkpoints named."""

import os
import pickle
import random

import pytest
import torch

from titans_pretrain import checkpoint as ckpt
from titans_pretrain import resharding
from titans_pretrain import sharded_checkpoint as sharded
from titans_pretrain.distributed import Layout
from titans_pretrain.train_state import TrainState
from tests.pretrain.test_resharding import VARIANTS, trained

ONE = Layout(rank=0, world=1, local_rank=0, tensor=1, tp_rank=0, data=1, dp_rank=0)
CONFIG = {"model": {"variant": "any"}}


@pytest.mark.parametrize("seed", range(8))
def test_flat_ranges_become_the_boxes_they_cover(seed):
    rng = random.Random(seed)
    for _ in range(25):
        shape = (rng.randint(1, 40),) if rng.random() < 0.3 else (rng.randint(1, 9), rng.randint(1, 9))
        n = shape[0] * (shape[1] if len(shape) == 2 else 1)
        lo = rng.randrange(n)
        hi = rng.randint(lo + 1, n)
        flat = torch.arange(n).view(shape)
        seen = torch.zeros(n, dtype=torch.long)
        for offset, size, start, end in sharded._boxes(shape, lo, hi):
            box = flat[tuple(slice(o, o + s) for o, s in zip(offset, size))]
            assert torch.equal(box.reshape(-1), torch.arange(start, end)), (shape, lo, hi)  # contiguous, in order
            seen[box.reshape(-1)] += 1
        expected = torch.zeros(n, dtype=torch.long)
        expected[lo:hi] = 1
        assert torch.equal(seen, expected), (shape, lo, hi)
        assert len(sharded._boxes(shape, lo, hi)) <= 3


def split_points(n, parts, rng):
    return [0] + sorted(rng.sample(range(1, n), parts - 1)) + [n]


@pytest.mark.parametrize("variant", ["mag", "gdn"])
def test_flat_ranges_of_every_tensor_save_and_read_back_whole(variant, tmp_path):
    """As a distributed optimizer holds them: each tensor cut at random points into 3 ranges (crossing
    SwiGLU's halves and rows), every range's chunks saved; read back whole, each tensor is the original.
    And the reverse: saved whole, each range reads back its own elements."""
    _, model, _ = trained(variant, seed=1)
    placements, rng = resharding.placements_of(model), random.Random(0)
    chunks, tensors = [], {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    for key, value in tensors.items():
        cuts = split_points(value.numel(), 3, rng) if value.numel() >= 3 else [0, value.numel()]
        for start, end in zip(cuts, cuts[1:]):
            chunks += sharded.range_chunks(key, placements.get(key), value, start, end, value.reshape(-1)[start:end])
    group = ckpt.checkpoint_group()
    sharded.save(str(tmp_path / "ranges"), chunks, group)
    whole = sharded.read_whole(str(tmp_path / "ranges"))
    sharded.save(str(tmp_path / "whole"), sharded.model_chunks(model), group)
    assert whole.keys() == sharded.read_whole(str(tmp_path / "whole")).keys()
    for key, value in tensors.items():
        pieces, _ = resharding.split_pieces(key, placements.get(key), value)
        for name, shape, offset, data in pieces:
            _, at, size = sharded._view2d(name, shape, offset, data.shape)
            box = whole[name][tuple(slice(o, o + n) for o, n in zip(at, size))]
            assert torch.equal(box.reshape(data.shape), data), name
    targets = [sharded.Chunk(c.key, c.shape, c.offset, torch.empty_like(c.data)) for c in chunks]
    sharded.load(str(tmp_path / "whole"), targets, group)
    for target, chunk in zip(targets, chunks):
        assert torch.equal(target.data, chunk.data), chunk.key


def assert_same_state(model, optimizer, other, other_opt):
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    mine, theirs = optimizer.state_dict(), other_opt.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    assert mine["state"].keys() == theirs["state"].keys() and mine["state"]
    for i, state in mine["state"].items():
        for key, value in state.items():
            assert torch.equal(value, theirs["state"][i][key]), (i, key)


@pytest.mark.parametrize("variant, asynchronous", [(v, False) for v in VARIANTS] + [("mag", True), ("gdn", True)])
def test_model_and_optimizer_round_trip_exactly(variant, asynchronous, tmp_path):
    _, model, optimizer = trained(variant, seed=1)
    _, other, other_opt = trained(variant, seed=2)
    saved = ckpt.save(str(tmp_path), 5, model, optimizer, [{}], CONFIG, ONE, keep=1, asynchronous=asynchronous)
    folder = saved.wait() if asynchronous else saved
    assert sorted(os.listdir(tmp_path)) == ["iter_0000005", "latest"]
    ckpt.load(folder, other, other_opt, CONFIG, ONE)
    assert_same_state(model, optimizer, other, other_opt)


def test_an_asynchronous_save_holds_the_state_it_was_given(tmp_path):
    """The state is copied when the save starts: a step taken while it is written is not in it."""
    _, model, optimizer = trained("mag", seed=1)
    _, reference, reference_opt = trained("mag", seed=1)
    pending = ckpt.save(str(tmp_path), 1, model, optimizer, [{}], CONFIG, ONE, keep=0, asynchronous=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for s in optimizer.state.values():
        s["exp_avg"].add_(1.0)
    assert not (tmp_path / "latest").exists() or pending.ready()
    _, other, other_opt = trained("mag", seed=2)
    ckpt.load(pending.wait(), other, other_opt, CONFIG, ONE)
    assert_same_state(reference, reference_opt, other, other_opt)


def test_the_previous_format_still_loads(tmp_path):
    """titans-tp-pieces-1 (one file per tensor-parallel rank, written before the sharded format)."""
    _, model, optimizer = trained("mac", seed=1)
    _, other, other_opt = trained("mac", seed=2)
    folder = tmp_path / "iter_0000005"
    folder.mkdir()
    torch.save(resharding.model_pieces(model), folder / "model_tp0.pt")
    torch.save(resharding.optimizer_pieces(model, optimizer), folder / "optimizer_tp0.pt")
    TrainState(5, [{}], CONFIG, ONE.as_dict()).write(str(folder))
    ckpt.load(str(folder), other, other_opt, CONFIG, ONE)
    assert_same_state(model, optimizer, other, other_opt)


def damaged(tmp_path, how):
    _, model, optimizer = trained("mag", seed=1)
    folder = ckpt.save(str(tmp_path), 5, model, optimizer, [{}], CONFIG, ONE, keep=0)
    shard = os.path.join(folder, "__0_0.distcp")
    if how == "truncated":
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) - 10)
    elif how == "missing shard":
        os.remove(shard)
    elif how == "no metadata":
        os.remove(os.path.join(folder, ".metadata"))
    elif how == "crafted metadata":
        class Exploit:
            def __reduce__(self):
                return (os.system, ("echo pwned",))
        with open(os.path.join(folder, ".metadata"), "wb") as f:
            pickle.dump(Exploit(), f)
    return folder


@pytest.mark.parametrize("how, message", [
    ("truncated", "__0_0.distcp is truncated"),
    ("missing shard", "lacks __0_0.distcp (a shard of the saved state)"),
    ("no metadata", "lacks .metadata (the index of the sharded state, written last: the save did not complete)"),
    ("crafted metadata", "posix.system is not allowed in checkpoint metadata"),
])
def test_a_damaged_checkpoint_is_named_and_kept(tmp_path, how, message):
    folder = damaged(tmp_path, how)
    before = sorted(os.listdir(folder))
    _, other, other_opt = trained("mag", seed=2)
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.load(folder, other, other_opt, CONFIG, ONE)
    assert str(error.value).startswith(f"{folder}: ") and message in str(error.value), str(error.value)
    assert sorted(os.listdir(folder)) == before


def test_another_model_or_shape_is_refused_by_name(tmp_path):
    _, model, optimizer = trained("mag", seed=1)
    folder = ckpt.save(str(tmp_path), 5, model, optimizer, [{}], CONFIG, ONE, keep=0)
    _, lmm, lmm_opt = trained("lmm", seed=1)
    with pytest.raises(ckpt.CheckpointError, match="the checkpoint holds other parameters than the model"):
        ckpt.load(folder, lmm, lmm_opt, CONFIG, ONE)
    name = next(k for k in sharded.read_whole(folder) if "linear_fc2.weight" in k)
    chunks = [c for c in sharded.model_chunks(model) if c.key == name]
    wider = [sharded.Chunk(c.key, (c.shape[0], c.shape[1] + 1), c.offset, c.data) for c in chunks]
    with pytest.raises(sharded.ShardError, match=f"{name}: the checkpoint's full shape is"):
        sharded.load(folder, wider, ckpt.checkpoint_group())
