"""bench/train_step.py runs every variant end to end in its CPU smoke configuration."""

import json
import subprocess
import sys

import pytest

from tests.bench.scripts import ROOT

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def test_smoke_run_writes_a_report(tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "bench/train_step.py", "--config", "configs/bench/train_step_smoke.json",
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.with_suffix(".json").read_text())
    config = json.loads((ROOT / "configs" / "bench" / "train_step_smoke.json").read_text())
    rows = result["rows"]
    assert [r["variant"] for r in rows] == config["variants"]
    for r in rows:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["model_tflops"] > 0 and r["flops_per_token"] > 6 * r["parameters"] / 2
    report = out.with_suffix(".md").read_text()
    assert "CPU smoke run" in report and "| mag tokens/s >= 0.7x transformer++ |" in report
    assert "not met" not in report.split("Targets")[1] and " met |" not in report.split("Targets")[1]  # n/a on CPU
    assert "ETA" in proc.stderr
