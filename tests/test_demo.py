"""`make demo`'s driver, end to end at a few steps: every stage runs and the summary is printed."""

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path):
    """Started by its path from another folder (nothing depends on the current directory)."""
    proc = subprocess.run([sys.executable, str(ROOT / "pretrain" / "demo.py"), "--workdir", "demo", "--steps", "24"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout
    for marker in ("== 1. tokenizer", "== 2. shards", "stopping at step 12 (run.stop_at_step)",
                   "resumed from", "\"val_perplexity\"", "== 6. eval_suite", "== summary", "latest: iter_0000024"):
        assert marker in out, marker
    report = (tmp_path / "demo" / "eval" / "report.md").read_text()
    assert "S-NIAH-PK 256" in report and "loss_curves.png" in report
