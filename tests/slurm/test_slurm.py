"""``sbatch slurm/titans_tiny.sh`` on a real one-node SLURM cluster: 2 tasks over gloo (data parallel),
a checkpoint and logs; a job signalled mid-run saves, requeues itself and resumes to the same losses
as an uninterrupted one; ``CONTEXT=2`` splits each sequence over the 2 tasks instead and trains to the
data-parallel job's losses; bad inputs stop the job before any task starts."""

import json
import re
import subprocess
import time

import pytest

from tests.helpers import ROOT, losses, tiny_overrides

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

STEPS = {"schedule.train_steps": 24, "checkpoint.interval": 8, "eval.interval": 0, "log.interval": 4}


def submit(env, workdir, run, shards, extra=(), variant="mag", **variables):
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = [o for o in tiny_overrides(shards, "unused", **STEPS)
                 if not o.startswith(("data.dir=", "checkpoint.dir="))]
    env = {**env, "DATA_DIR": str(shards), "CKPT_ROOT": str(workdir / "checkpoints"), "RUN_NAME": run,
           "PYTHON": __import__("sys").executable, **variables}
    proc = subprocess.run(["sbatch", "--parsable", str(ROOT / "slurm" / "titans_tiny.sh"), *([variant] if variant else []),
                           *overrides, *extra],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    return job, workdir / f"titans-tiny-{job}.out", workdir / "checkpoints" / run


def job_state(env, job):
    proc = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True, timeout=30)
    fields = dict(re.findall(r"(\w+)=(\S*)", proc.stdout))
    return fields.get("JobState"), int(fields.get("Restarts", 0)), fields.get("ExitCode")


def wait_for(env, job, log, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state, restarts, code = job_state(env, job)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state, restarts, code
        time.sleep(1)
    subprocess.run(["scancel", job], env=env, timeout=30)
    raise AssertionError(f"job {job} still {state} after {timeout}s; log:\n{log.read_text()[-3000:] if log.exists() else ''}")


@pytest.fixture(scope="module")
def whole_job(slurm_cluster, train_shards, tmp_path_factory):
    """One uninterrupted job: checked on its own, and the reference of the requeued one."""
    job, log, ckpt = submit(slurm_cluster, tmp_path_factory.mktemp("whole"), "whole", train_shards)
    return wait_for(slurm_cluster, job, log), log, ckpt


def test_tiny_job_trains_and_checkpoints(whole_job):
    (state, restarts, code), log, ckpt = whole_job
    text = log.read_text()
    assert (state, restarts, code) == ("COMPLETED", 0, "0:0"), text[-3000:]
    assert "launch.sh: job" in text and "2 task(s): tiny mag" in text and "tensor 1 x data 2" in text
    assert "launch.sh: training finished" in text
    assert (ckpt / "latest").read_text() == "iter_0000024"
    assert sorted(p.name for p in (ckpt / "iter_0000024").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "data_summary.json", "optimizer.pt", "rng_00000.pt",
        "rng_00001.pt", "tokenizer.model", "train_state.json"]
    assert json.loads((ckpt / "iter_0000024" / "train_state.json").read_text())["layout"]["data"] == 2
    assert sorted(losses(ckpt)) == list(range(1, 25))
    assert list((ckpt / "tensorboard").glob("events.out.tfevents.*"))


def test_signalled_job_requeues_and_resumes_exactly(slurm_cluster, train_shards, whole_job, tmp_path):
    (state, _, _), whole_log, whole = whole_job
    assert state == "COMPLETED", whole_log.read_text()[-3000:]

    job, log, ckpt = submit(slurm_cluster, tmp_path / "b", "split", train_shards,
                            extra=["schedule.train_steps=24"])
    metrics = ckpt / "tensorboard" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    assert metrics.exists(), log.read_text()[-3000:] if log.exists() else "no log"
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm_cluster, check=True, timeout=30)
    state, restarts, code = wait_for(slurm_cluster, job, log)
    text = log.read_text()
    assert (state, restarts) == ("COMPLETED", 1), text[-4000:]
    stop = re.search(r"stopping at step (\d+) \(signal SIGUSR1\)", text)
    assert stop and 0 < int(stop.group(1)) < 24, text[-4000:]
    assert "requeueing job" in text and "attempt 2" in text
    assert f"resumed from {ckpt / f'iter_{int(stop.group(1)):07d}'}" in text
    assert losses(ckpt) == losses(whole)  # bit for bit


def test_context_parallel_job_trains_to_the_data_parallel_losses(slurm_cluster, train_shards, whole_job, tmp_path):
    """The same global batches, each sequence split over the two tasks (one replica) instead of the
    samples (two): the same losses up to reduction order."""
    (state, _, _), whole_log, whole = whole_job
    assert state == "COMPLETED", whole_log.read_text()[-3000:]
    job, log, ckpt = submit(slurm_cluster, tmp_path, "cp", train_shards, CONTEXT="2")
    state, restarts, code = wait_for(slurm_cluster, job, log)
    text = log.read_text()
    assert (state, restarts, code) == ("COMPLETED", 0, "0:0"), text[-3000:]
    assert "tensor 1 x context 2 x data 1" in text
    layout = json.loads((ckpt / "iter_0000024" / "train_state.json").read_text())["layout"]
    assert (layout["context"], layout["data"]) == (2, 1)
    got, want = losses(ckpt), losses(whole)
    assert sorted(got) == sorted(want) == list(range(1, 25))
    assert max(abs(got[k] - want[k]) / want[k] for k in want) < 1e-5, (got, want)


def test_bad_inputs_stop_the_job_before_any_task(slurm_cluster, train_shards, tmp_path):
    job, log, ckpt = submit(slurm_cluster, tmp_path, "bad", train_shards, DATA_DIR=str(tmp_path / "missing"))
    state, restarts, code = wait_for(slurm_cluster, job, log)
    text = log.read_text()
    assert (state, restarts, code) == ("FAILED", 0, "2:0"), text[-3000:]
    assert f"data.dir {tmp_path / 'missing'}: no such directory" in text and "nothing was started" in text
    assert not (ckpt / "latest").exists()

    # CONFIG without VARIANT: the config's own variant, not the default's.
    job, log, _ = submit(slurm_cluster, tmp_path / "own", "own", train_shards, variant=None,
                         CONFIG=str(ROOT / "configs" / "tiny_mac.json"), DATA_DIR=str(tmp_path / "missing"))
    assert wait_for(slurm_cluster, job, log)[0] == "FAILED"
    assert "x 2 task(s): tiny mac" in log.read_text()
