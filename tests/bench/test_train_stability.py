"""bench/train_stability.py end to end in its smoke configuration: data made from the shipped corpus,
a few training steps through pretrain/train.py, the table read from the run's metrics; a second call
on the same folder reports the finished run without training it again."""

import json
import os
import subprocess
import sys

import pytest

from tests.bench.scripts import ROOT

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def test_train_stability_smoke(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "train_stability.py"), "--config",
           str(ROOT / "configs" / "bench" / "train_stability_smoke.json"), "--output", str(tmp_path / "out"),
           "--workdir", str(tmp_path / "work")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    row = json.loads((tmp_path / "out.json").read_text())["rows"][0]
    assert row["exit_code"] == 0 and row["steps"] == 3 and row["skipped_steps"] == 0, row
    assert row["first_loss"] > 0 and row["max_grad_norm"] > 0
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "out.json").read_text())["rows"][0]["seconds"] is None  # reported, not retrained
