"""bench/checkpoint.py end to end on its CPU smoke configuration (one layout: two data-parallel ranks):
both formats saved and loaded, and the sharded save's shares cover the whole state, evenly."""

import json
import subprocess
import sys

import pytest

from tests.bench.scripts import ROOT

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def test_smoke_run_writes_a_report(tmp_path):
    config = json.loads((ROOT / "configs" / "bench" / "checkpoint_smoke.json").read_text())
    config["layouts"] = [{"tensor": 1, "data": 2}]
    (tmp_path / "smoke.json").write_text(json.dumps(config))
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "bench/checkpoint.py", "--config", str(tmp_path / "smoke.json"),
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert run["ranks"] == 2 and run["save_previous_s"] > 0 and run["save_sharded_s"] > 0
    assert run["load_previous_s"] > 0 and run["load_sharded_s"] > 0 and run["step_with_async_save_s"] > 0
    # fp32 weights and two AdamW moments (and a few buffers), split between the ranks within 10%
    state = 3 * 4 * run["params"]
    assert state <= sum(run["share_bytes"]) <= 1.05 * state
    assert max(run["share_bytes"]) <= 1.1 * min(run["share_bytes"])
    report = out.with_suffix(".md").read_text()
    assert "| 2 (1 x 2) |" in report and "save sharded (s)" in report and "done in" in proc.stdout
