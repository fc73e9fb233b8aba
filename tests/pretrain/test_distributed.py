"""Training under torchrun on CPU (gloo): tensor parallel 2 equals one process, data parallel 2 resumes
exactly, layouts that cannot work are refused."""

import subprocess
import sys

import pytest

from tests.pretrain.conftest import ROOT, losses, run_train, tiny_overrides

STEPS = {"schedule.train_steps": 6, "checkpoint.interval": 3, "eval.interval": 0}


def torchrun(overrides, nproc=2, check=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "pretrain" / "train.py"), "--config", str(ROOT / "configs" / "tiny_mag.json"), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_tensor_parallel_2_matches_one_process(train_shards, tmp_path):
    run_train(tiny_overrides(train_shards, tmp_path / "tp1", **STEPS))
    proc = torchrun(tiny_overrides(train_shards, tmp_path / "tp2", **STEPS, **{"parallel.tensor": 2}))
    assert "tensor 2 x data 1" in proc.stdout
    one, two = losses(tmp_path / "tp1"), losses(tmp_path / "tp2")
    assert sorted(two) == sorted(one) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5), step
    assert sorted(p.name for p in (tmp_path / "tp2" / "iter_0000006").iterdir()) == [
        "model_tp0.pt", "model_tp1.pt", "optimizer_tp0.pt", "optimizer_tp1.pt", "rng_00000.pt", "rng_00001.pt",
        "train_state.json"]
    # loading that checkpoint at another tensor-parallel size is refused until resharding exists
    proc = run_train(tiny_overrides(train_shards, tmp_path / "tp2", **{**STEPS, "schedule.train_steps": 8}), check=False)
    assert proc.returncode == 2 and "saved at tensor-parallel size 2, this run has 1" in proc.stderr


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
