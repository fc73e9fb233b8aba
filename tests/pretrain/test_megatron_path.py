"""The Megatron-core optimizer path in the training loop (optim.implementation=megatron: DDP buckets,
distributed optimizer, finalize_model_grads) on CPU over gloo: the same losses as torch's path at each
layout, an exact resume, and one checkpoint format: either path continues the other's checkpoints."""

import shutil

import pytest

from tests.helpers import losses, run_train, tiny_overrides
from tests.pretrain.test_distributed import STEPS, torchrun

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

MEGATRON = {"optim.implementation": "megatron", "optim.bucket_size": 4000}  # several buckets
TORCH = {"optim.implementation": "torch"}
DP2 = {}
TP2_SP = {"parallel.tensor": 2, "parallel.sequence": True}


def train(shards, ckpt, nproc, check=True, **overrides):
    args = tiny_overrides(shards, ckpt, **{**STEPS, **overrides})
    return torchrun(args, nproc=nproc, check=check) if nproc > 1 else run_train(args, check=check)


@pytest.fixture(scope="module")
def runs(train_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("megatron_path")
    train(train_shards, root / "torch_dp2", 2, **TORCH, **DP2)
    proc = train(train_shards, root / "megatron_dp2", 2, **MEGATRON, **DP2)
    assert "tensor 1 x data 2" in proc.stdout and "megatron optimizer" in proc.stdout
    train(train_shards, root / "torch_tp1", 1, **TORCH)
    train(train_shards, root / "megatron_tp2", 2, **MEGATRON, **TP2_SP)
    return root


def test_megatron_path_equals_torch_path(runs):
    """Distributed optimizer over data-parallel 2, and tensor parallel 2 with sequence parallelism
    (its norm gradients summed by finalize_model_grads) against one process of torch AdamW."""
    for megatron, torch_ in (("megatron_dp2", "torch_dp2"), ("megatron_tp2", "torch_tp1")):
        ours, reference = losses(runs / megatron), losses(runs / torch_)
        assert sorted(ours) == sorted(reference) == list(range(1, 7))
        for step in ours:
            assert ours[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-5), (megatron, step)


def test_distributed_optimizer_stops_and_resumes_exactly(runs, train_shards, tmp_path):
    proc = train(train_shards, tmp_path / "split", 2, check=False, **MEGATRON, **{"run.stop_at_step": 4})
    assert proc.returncode != 0 and "stopping at step 4 (run.stop_at_step)" in proc.stdout
    proc = train(train_shards, tmp_path / "split", 2, **MEGATRON)
    assert "resumed from" in proc.stdout
    assert losses(tmp_path / "split") == losses(runs / "megatron_dp2")


def from_step_3(source, target):
    """A copy of a run's checkpoint directory as it was after step 3."""
    shutil.copytree(source, target)
    shutil.rmtree(target / "iter_0000006")
    (target / "latest").write_text("iter_0000003")
    (target / "tensorboard" / "metrics.jsonl").unlink()
    return target


@pytest.mark.parametrize("saved, resumed", [("megatron", "torch"), ("torch", "megatron")])
def test_either_path_continues_the_others_checkpoint(runs, train_shards, tmp_path, saved, resumed):
    """AdamW moments and step count cross over: steps 4-6 equal the saving path's own."""
    target = from_step_3(runs / f"{saved}_dp2", tmp_path / "continued")
    proc = train(train_shards, target, 2, **(MEGATRON if resumed == "megatron" else TORCH))
    assert "resumed from" in proc.stdout and f"{resumed} optimizer" in proc.stdout
    whole, continued = losses(runs / f"{saved}_dp2"), losses(target)
    assert sorted(continued) == [4, 5, 6]
    for step in continued:
        assert continued[step] == pytest.approx(whole[step], rel=1e-5, abs=1e-5), step
