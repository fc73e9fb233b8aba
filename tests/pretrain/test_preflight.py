"""``train.py --check``: the inputs of a run are checked in seconds, before any process group or model."""

import json

import pytest

from titans_pretrain import trainer
from titans_pretrain.config import load_config
from tests.helpers import TINY_CONFIG, run_train, tiny_overrides, train_main


def check(overrides, world=2):
    """``train.py --check`` in this process (the command line itself: test_a_good_run_is_summarised)."""
    return train_main(["--check", "--world", world, *overrides])


@pytest.mark.process  # the command line, once: not in make test-fast
def test_a_good_run_is_summarised(train_shards, tmp_path):
    proc = run_train(["--check", "--world", "2",
                      *tiny_overrides(train_shards, tmp_path / "ckpt", **{"schedule.train_tokens": 1000})], check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 1000 tokens / (4 x 32 per step) -> 8 steps; 2 processes, data parallel 2
    assert "model tiny mag: 8 steps x 128 tokens" in proc.stdout and "tensor 1 x data 2" in proc.stdout
    assert "train shards" in proc.stdout and "a fresh run" in proc.stdout
    assert not (tmp_path / "ckpt" / "latest").exists() and not list((tmp_path / "ckpt").iterdir())


def test_each_bad_input_is_named(train_shards, tmp_path):
    (tmp_path / "file").write_text("")
    cases = [
        ({"checkpoint.dir": str(tmp_path / "file" / "ckpt")}, "not writable (Not a directory)"),
        ({"model.overrides": {"seq_length": 32, "vocab_size": 700, "window_size": 16}}, "the tokenizer has 600 tokens, the model's vocab_size is 700"),
        ({"model.overrides": {"seq_length": 64, "vocab_size": 600}}, "shards hold windows of seq_len 32, but the model's seq_length is 64"),
        ({"parallel.tensor": 3}, "parallel.tensor (3) must divide the number of processes (2)"),
        ({"schedule.micro_batch": 3}, "schedule.global_batch (4) must be a multiple of schedule.micro_batch (3)"),
        ({"data.dir": ""}, "data.dir is not set"),
    ]
    for extra, message in cases:
        proc = check(tiny_overrides(train_shards, tmp_path / "ckpt", **extra))
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr[-300:])


def test_resume_is_checked(train_shards, tmp_path):
    ckpt = tmp_path / "ckpt"
    config = load_config(str(TINY_CONFIG), tiny_overrides(train_shards, ckpt, **{"schedule.train_steps": 2,
                                                                                  "eval.interval": 0}))
    assert trainer.train(config, log=lambda line: None) == 0
    ok = check(tiny_overrides(train_shards, ckpt), world=1)
    assert ok.returncode == 0 and "resuming from" in ok.stdout and "at step 2" in ok.stdout
    at2 = check(tiny_overrides(train_shards, ckpt), world=2)  # the sample order does not depend on it
    assert at2.returncode == 0 and "resuming from" in at2.stdout and "data 2" in at2.stdout, at2.stderr[-300:]
    state = json.loads((ckpt / "iter_0000002" / "train_state.json").read_text())
    old = dict(state, data=[{"epoch": 0, "position": 4, "dp_rank": 0, "dp_world": 1, "seed": 0}])
    (ckpt / "iter_0000002" / "train_state.json").write_text(json.dumps(old))
    proc = check(tiny_overrides(train_shards, ckpt), world=1)
    assert proc.returncode == 2 and "per-rank sample order of an earlier version" in proc.stderr
    assert f"checkpoint.init_from={ckpt / 'iter_0000002'}" in proc.stderr
    (ckpt / "iter_0000002" / "train_state.json").write_text(json.dumps(state))
    other = tiny_overrides(train_shards, ckpt, **{"model.overrides": {"hidden_size": 32}})
    proc = check(other, world=1)
    assert proc.returncode == 2 and "holds a different model" in proc.stderr and "hidden_size" in proc.stderr
    assert json.loads((ckpt / "iter_0000002" / "train_state.json").read_text())["step"] == 2
