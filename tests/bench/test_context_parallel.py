"""bench/context_parallel.py runs end to end in its CPU smoke configuration: every (cp, L) row holds a
step time, a per-rank peak and the all-to-all's share (zero without context parallelism)."""

import json
import subprocess
import sys

import pytest

from tests.bench.scripts import ROOT

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

SMOKE = ROOT / "configs" / "bench" / "context_parallel_smoke.json"


def test_smoke_run_writes_a_report(tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "bench/context_parallel.py", "--config", str(SMOKE), "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads(SMOKE.read_text())
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["rows"]
    assert [(r["context"], r["length"]) for r in rows] == [(c, n) for c in config["contexts"] for n in config["lengths"]]
    for r in rows:
        assert "error" not in r, r
        assert r["step_seconds"] > 0 and r["peak_mib"] is not None and 0 <= r["all_to_all_share"] < 1, r
        assert (r["all_to_all_seconds"] > 0) == (r["context"] > 1), r
    assert report["meta"]["longest_within_budget"]["1"] == max(config["lengths"])
    assert "| cp | L | step s |" in out.with_suffix(".md").read_text()
