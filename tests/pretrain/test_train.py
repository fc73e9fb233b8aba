"""pretrain/train.py: exact resume after a kill, signals, non-finite steps, checkpoint refusal."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from titans_pretrain import trainer
from titans_pretrain.config import load_config
from tests.helpers import TINY_CONFIG, losses, run_train, tiny_overrides, train_cmd, train_main

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def test_loss_falls_and_outputs_exist(train_shards, tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = train_main(tiny_overrides(train_shards, ckpt, **{"schedule.train_steps": 24, "optim.lr": 0.01}), check=True)
    curve = losses(ckpt)
    assert sorted(curve) == list(range(1, 25))
    assert sum(curve[s] for s in range(21, 25)) / 4 < sum(curve[s] for s in range(1, 5)) / 4 - 0.5
    assert (ckpt / "latest").read_text() == "iter_0000024"
    # self-contained: the tokenizer and the data's summary travel with every checkpoint
    manifest = json.loads((train_shards / "manifest.json").read_text())
    assert (ckpt / "iter_0000024" / "tokenizer.model").read_bytes() == open(manifest["tokenizer"]["path"], "rb").read()
    assert json.loads((ckpt / "iter_0000024" / "data_summary.json").read_text())["data_dir"] == str(train_shards)
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("iter_")) == ["iter_0000020", "iter_0000024"]
    assert list((ckpt / "tensorboard").glob("events.out.tfevents.*"))
    assert "ETA" in proc.stdout and "val loss" in proc.stdout


def test_kill_and_resume_is_bit_identical(train_shards, tmp_path):
    reference = tmp_path / "reference"
    run_train(tiny_overrides(train_shards, reference))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(tiny_overrides(train_shards, killed)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "iter_0000008").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    proc = run_train(tiny_overrides(train_shards, killed))
    assert "resumed from" in proc.stdout
    assert losses(killed) == losses(reference)  # every step, to the last bit


def test_signal_saves_and_asks_for_requeue(train_shards, tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(train_cmd(tiny_overrides(train_shards, ckpt, **{"schedule.train_steps": 400,
                                                                             "checkpoint.interval": 1000})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (ckpt / "tensorboard" / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == trainer.EXIT_REQUEUE
    step = int((ckpt / "latest").read_text().split("_")[1])
    assert 0 < step < 400 and f"stopping at step {step} (signal SIGUSR1)" in out
    assert json.loads((ckpt / "stopped.json").read_text()) == {"step": step, "reason": "signal SIGUSR1"}


def _config(train_shards, ckpt, **extra):
    return load_config(str(TINY_CONFIG), tiny_overrides(train_shards, ckpt, **extra))


def test_non_finite_steps_are_skipped_then_abort(train_shards, tmp_path, monkeypatch):
    real = trainer.language_model_loss
    calls = {"n": 0}

    def sometimes_nan(model, batch, precision):
        calls["n"] += 1
        loss = real(model, batch, precision)
        return loss * float("nan") if calls["n"] in (5, 6) else loss  # step 3's two micro-batches

    monkeypatch.setattr(trainer, "language_model_loss", sometimes_nan)
    ckpt = tmp_path / "ckpt"
    lines = []
    assert trainer.train(_config(train_shards, ckpt), log=lines.append) == 0
    assert any("step 3: non-finite loss" in line and "skipped (1 in a row)" in line for line in lines)
    records = [json.loads(x) for x in (ckpt / "tensorboard" / "metrics.jsonl").read_text().splitlines()]
    assert 3 not in [r["step"] for r in records] and records[-1]["skipped_steps"] == 1

    monkeypatch.setattr(trainer, "language_model_loss", lambda model, batch, precision: real(model, batch, precision) * float("inf"))
    before = (ckpt / "latest").read_text()
    with pytest.raises(trainer.TrainingAborted, match=f"5 non-finite steps in a row .*intact: .*{before}"):
        trainer.train(_config(train_shards, ckpt, **{"schedule.train_steps": 30}), log=lambda line: None)
    assert (ckpt / "latest").read_text() == before and (ckpt / before).is_dir()
    with pytest.raises(trainer.TrainingAborted, match="no checkpoint had been written"):
        trainer.train(_config(train_shards, tmp_path / "fresh"), log=lambda line: None)

    # A stop during a run of skipped steps is honoured at once, not after the next good step.
    lines = []
    status = trainer.train(_config(train_shards, tmp_path / "stop", **{"run.stop_at_step": 2}), log=lines.append)
    assert status == trainer.EXIT_REQUEUE and any("stopping at step 2 (run.stop_at_step)" in x for x in lines)


def test_signal_while_starting_asks_for_requeue(train_shards, tmp_path, monkeypatch):
    real = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", lambda config, seed: (os.kill(os.getpid(), signal.SIGTERM),
                                                                      real(config, seed=seed))[1])
    lines = []
    assert trainer.train(_config(train_shards, tmp_path / "ckpt"), log=lines.append) == trainer.EXIT_REQUEUE
    assert "stopping at step 0 (signal SIGTERM)" in lines[-1]
    assert not (tmp_path / "ckpt" / "latest").exists()  # nothing trained, nothing saved
    assert json.loads((tmp_path / "ckpt" / "stopped.json").read_text())["reason"] == "signal SIGTERM"


def test_rerun_of_a_finished_run_writes_nothing(train_shards, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert trainer.train(_config(train_shards, ckpt), log=lambda line: None) == 0
    final = ckpt / (ckpt / "latest").read_text()
    inode = final.stat().st_ino
    lines = []
    assert trainer.train(_config(train_shards, ckpt), log=lines.append) == 0
    assert not any(x.startswith("saved ") for x in lines) and final.stat().st_ino == inode

    from titans_pretrain import val_loss
    other = tmp_path / "other_shards"  # the same shards, said to hold longer windows
    shutil.copytree(train_shards, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "seq_len": manifest["seq_len"] * 2}))
    assert val_loss.main(["--checkpoint", str(ckpt), "--data", str(other)]) == 2
    assert "error: " in capsys.readouterr().err


def test_checkpoint_of_another_model_is_refused(train_shards, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert trainer.train(_config(train_shards, ckpt, **{"schedule.train_steps": 4}), log=lambda line: None) == 0
    proc = train_main(tiny_overrides(train_shards, ckpt, **{"schedule.train_steps": 8, "model.variant": "lmm"}))
    assert proc.returncode == 2
    assert "holds a different model" in proc.stderr and "model.variant: 'mag' in the checkpoint, 'lmm' now" in proc.stderr
    # a truncated file and a missing one: named, and nothing already saved is removed
    shard = ckpt / "iter_0000004" / "__0_0.distcp"
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])
    proc = train_main(tiny_overrides(train_shards, ckpt, **{"schedule.train_steps": 8}))
    assert proc.returncode == 2 and f"{shard.parent}: __0_0.distcp is truncated ({len(whole) // 2} bytes" in proc.stderr, \
        proc.stderr[-500:]
    shard.unlink()
    proc = train_main(tiny_overrides(train_shards, ckpt, **{"schedule.train_steps": 8}))
    assert proc.returncode == 2 and f"{shard.parent}: lacks __0_0.distcp" in proc.stderr, proc.stderr[-500:]
    assert (ckpt / "latest").read_text() == "iter_0000004" and (ckpt / "iter_0000004" / ".metadata").exists()


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=0.1", r"unknown key optim.lrr; optim has \["),
    ("optimizer.lr=0.1", r"unknown section 'optimizer'; sections are \["),
    ("schedule.train_steps=ten", r"schedule.train_steps: expected int, got 'ten'"),
    ("lr=0.1", r"override 'lr=0.1': expected section.key=value"),
])
def test_bad_overrides(train_shards, tmp_path, override, message):
    import re
    proc = train_main(tiny_overrides(train_shards, tmp_path / "c") + [override])
    assert proc.returncode == 2 and re.search(message, proc.stderr), proc.stderr[-500:]


def test_bad_data_configurations(train_shards, tmp_path):
    proc = train_main(tiny_overrides(train_shards, tmp_path / "a", **{"model.overrides": {"seq_length": 64, "vocab_size": 600}}))
    assert proc.returncode == 2 and "shards hold windows of seq_len 32, but the model's seq_length is 64" in proc.stderr
    proc = train_main(tiny_overrides(tmp_path / "nowhere", tmp_path / "b"))
    assert proc.returncode == 2 and "nowhere: no such directory" in proc.stderr
    proc = train_main(tiny_overrides(train_shards, tmp_path / "c", **{"schedule.global_batch": 5}))
    assert proc.returncode == 2 and "schedule.global_batch (5) must be a multiple of schedule.micro_batch (2)" in proc.stderr
    assert not os.path.exists(tmp_path / "c" / "latest")
    # the tokenizer every checkpoint carries a copy of must be where the manifest says, and be that one
    moved = tmp_path / "moved"
    shutil.copytree(train_shards, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    for path, message in [("/nonexistent/tok.model", "names the tokenizer /nonexistent/tok.model, which does not exist"),
                          (str(moved / "manifest.json"), "(sha256 differs): the shards were made with another")]:
        manifest["tokenizer"]["path"] = path
        (moved / "manifest.json").write_text(json.dumps(manifest))
        proc = train_main(tiny_overrides(moved, tmp_path / "d"))
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-500:]
    assert not os.path.exists(tmp_path / "d" / "latest")


def test_bf16_training_on_cpu_is_refused(train_shards, tmp_path):
    proc = train_main(tiny_overrides(train_shards, tmp_path / "c", **{"run.precision": "bf16"}))
    assert proc.returncode == 2 and "run.precision bf16 trains on CUDA only" in proc.stderr, proc.stderr[-500:]
    assert not os.path.exists(tmp_path / "c" / "latest")
