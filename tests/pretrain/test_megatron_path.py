"""The Megatron-core optimizer path in the training loop (optim.implementation=megatron: DDP buckets,
distributed optimizer, finalize_model_grads) on CPU over gloo: the same losses as torch's path at each
layout, an exact resume, and one checkpoint format: either path continues the other's checkpoints."""

import pytest

from tests.helpers import as_of_step, losses, tiny_overrides, torchrun, train_main
from tests.pretrain.conftest import STEPS

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

MEGATRON = {"optim.implementation": "megatron", "optim.bucket_size": 4000}  # several buckets
TORCH = {"optim.implementation": "torch"}
TP2_SP = {"parallel.tensor": 2, "parallel.sequence": True}


def train(shards, ckpt, check=True, **overrides):
    return torchrun(tiny_overrides(shards, ckpt, **{**STEPS, **overrides}), nproc=2, check=check)


@pytest.fixture(scope="module")
def runs(train_shards, layout_runs, tmp_path_factory):
    """Megatron's path at data parallel 2 and at tensor parallel 2 with sequence parallelism; torch's path
    (``torch_dp2``, ``torch_tp1``) is the session's layout_runs."""
    root = tmp_path_factory.mktemp("megatron_path")
    proc = train(train_shards, root / "megatron_dp2", **MEGATRON)
    assert "tensor 1 x data 2" in proc.stdout and "megatron optimizer" in proc.stdout
    train(train_shards, root / "megatron_tp2", **MEGATRON, **TP2_SP)
    for name in ("dp2", "tp1"):
        (root / f"torch_{name}").symlink_to(layout_runs / name)
    return root


def test_megatron_path_equals_torch_path(runs):
    """Distributed optimizer over data-parallel 2, and tensor parallel 2 with sequence parallelism
    (its norm gradients summed by finalize_model_grads) against one process of torch AdamW."""
    for megatron, torch_ in (("megatron_dp2", "torch_dp2"), ("megatron_tp2", "torch_tp1")):
        ours, reference = losses(runs / megatron), losses(runs / torch_)
        assert sorted(ours) == sorted(reference) == list(range(1, 9))
        for step in ours:
            assert ours[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-5), (megatron, step)


def test_distributed_optimizer_stops_and_resumes_exactly(runs, train_shards, tmp_path):
    proc = train(train_shards, tmp_path / "split", check=False, **MEGATRON, **{"run.stop_at_step": 4})
    assert proc.returncode != 0 and "stopping at step 4 (run.stop_at_step)" in proc.stdout
    proc = train(train_shards, tmp_path / "split", **MEGATRON)
    assert "resumed from" in proc.stdout
    assert losses(tmp_path / "split") == losses(runs / "megatron_dp2")


@pytest.mark.parametrize("saved, resumed", [("megatron", "torch"), ("torch", "megatron")])
def test_either_path_continues_the_others_checkpoint(runs, train_shards, tmp_path, saved, resumed):
    """AdamW moments and step count cross over: steps 7 and 8 equal the saving path's own."""
    target = as_of_step(runs / f"{saved}_dp2", tmp_path / "continued", 6)
    proc = train(train_shards, target, **(MEGATRON if resumed == "megatron" else TORCH))
    assert "resumed from" in proc.stdout and f"{resumed} optimizer" in proc.stdout
    whole, continued = losses(runs / f"{saved}_dp2"), losses(target)
    assert sorted(continued) == [7, 8]
    for step in continued:
        assert continued[step] == pytest.approx(whole[step], rel=1e-5, abs=1e-5), step


def test_distributed_optimizer_resumes_at_another_data_parallel_size(runs, train_shards, tmp_path):
    """The distributed optimizer's shards of data parallel 2, saved, continue in one process: steps 7 and 8
    are the saving run's own (the global sample order and AdamW's moments carry over)."""
    target = as_of_step(runs / "megatron_dp2", tmp_path / "continued", 6)
    proc = train_main(tiny_overrides(train_shards, target, **{**STEPS, **MEGATRON}), check=True)
    assert "resumed from" in proc.stdout and "tensor 1 x data 1" in proc.stdout
    whole, continued = losses(runs / "megatron_dp2"), losses(target)
    assert sorted(continued) == [7, 8]
    for step in continued:
        assert continued[step] == pytest.approx(whole[step], rel=1e-5, abs=1e-5), step
