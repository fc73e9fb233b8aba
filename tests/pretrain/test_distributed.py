"""Training under torchrun on CPU (gloo): tensor parallel 2 equals one process, checkpoints load and train
on at another tensor-parallel size, data parallel 2 resumes exactly, layouts that cannot work are refused."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, losses, run_train, tiny_overrides

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

STEPS = {"schedule.train_steps": 6, "checkpoint.interval": 3, "eval.interval": 0}


def torchrun(overrides, nproc=2, check=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "pretrain" / "train.py"), "--config", str(ROOT / "configs" / "tiny_mag.json"), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def tp_runs(train_shards, tmp_path_factory):
    """The same 6 steps in one process and at tensor parallel 2, checkpoints every 3."""
    root = tmp_path_factory.mktemp("tp_runs")
    run_train(tiny_overrides(train_shards, root / "tp1", **STEPS))
    proc = torchrun(tiny_overrides(train_shards, root / "tp2", **STEPS, **{"parallel.tensor": 2}))
    assert "tensor 2 x data 1" in proc.stdout
    return root


def test_tensor_parallel_2_matches_one_process(tp_runs):
    one, two = losses(tp_runs / "tp1"), losses(tp_runs / "tp2")
    assert sorted(two) == sorted(one) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5), step
    assert sorted(p.name for p in (tp_runs / "tp2" / "iter_0000006").iterdir()) == [
        "model_tp0.pt", "model_tp1.pt", "optimizer_tp0.pt", "optimizer_tp1.pt", "rng_00000.pt", "rng_00001.pt",
        "train_state.json"]


def logits_at(nproc, checkpoints, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "tests" / "pretrain" / "logits_worker.py"), str(out), *map(str, checkpoints)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


def test_checkpoint_loads_at_another_tensor_parallel_size_with_the_same_logits(tp_runs, tmp_path):
    checkpoints = [tp_runs / "tp1", tp_runs / "tp2"]
    at1, at2 = logits_at(1, checkpoints, tmp_path / "at1.pt"), logits_at(2, checkpoints, tmp_path / "at2.pt")
    for path in map(str, checkpoints):
        torch.testing.assert_close(at2[path], at1[path], rtol=1e-5, atol=1e-5)
    # the two runs' weights differ in the last bits only; a load that ignored the checkpoint would not
    assert not torch.equal(at1[str(checkpoints[0])], at1[str(checkpoints[1])])
    torch.testing.assert_close(at1[str(checkpoints[0])], at1[str(checkpoints[1])], rtol=1e-3, atol=1e-3)


def continued(source, target, tensor, shards):
    """Copy a run's checkpoints and train on to step 8 at ``tensor`` parallel size."""
    shutil.copytree(source, target)
    (target / "tensorboard" / "metrics.jsonl").unlink()
    overrides = tiny_overrides(shards, target, **{**STEPS, "schedule.train_steps": 8, "parallel.tensor": tensor})
    proc = torchrun(overrides, nproc=tensor) if tensor > 1 else run_train(overrides)
    assert f"resumed from {target / 'iter_0000006'}" in proc.stdout
    return losses(target)


@pytest.mark.parametrize("saved, other", [(2, 1), (1, 2)])
def test_training_continues_at_another_tensor_parallel_size(tp_runs, train_shards, tmp_path, saved, other):
    """Model and AdamW state resharded: the next steps' losses are those of continuing at the saved size."""
    same = continued(tp_runs / f"tp{saved}", tmp_path / "same", saved, train_shards)
    moved = continued(tp_runs / f"tp{saved}", tmp_path / "moved", other, train_shards)
    assert sorted(moved) == sorted(same) == [7, 8]
    for step in same:
        assert moved[step] == pytest.approx(same[step], rel=1e-5, abs=1e-5), step


def test_data_parallel_2_stops_and_resumes_exactly(train_shards, tmp_path):
    torchrun(tiny_overrides(train_shards, tmp_path / "whole", **STEPS))
    proc = torchrun(tiny_overrides(train_shards, tmp_path / "split", **STEPS, **{"run.stop_at_step": 4}), check=False)
    assert proc.returncode != 0 and "stopping at step 4 (run.stop_at_step)" in proc.stdout
    proc = torchrun(tiny_overrides(train_shards, tmp_path / "split", **STEPS))
    assert "tensor 1 x data 2" in proc.stdout and "resumed from" in proc.stdout
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")


def test_impossible_layout_is_refused(train_shards, tmp_path):
    proc = torchrun(tiny_overrides(train_shards, tmp_path / "c", **STEPS, **{"parallel.tensor": 3}), check=False)
    assert proc.returncode != 0 and "parallel.tensor (3) must divide the number of processes (2)" in proc.stderr
