"""bench/memory_capacity.py in its smoke configuration writes its tables; the budget leaves distinct keys'
recall as it is and bounds the repeated key where the raw step diverges."""

import json
import os
import subprocess
import sys

import pytest

from tests.bench.scripts import ROOT

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def test_capacity_script_writes_its_tables(tmp_path):
    out = tmp_path / "capacity"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "memory_capacity.py"), "--config",
                             str(ROOT / "configs" / "bench" / "memory_capacity_smoke.json"), "--output", str(out)],
                            capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    payload = json.loads((tmp_path / "capacity.json").read_text())
    rows = payload["rows"]
    for r in rows:
        if r["budget"] is not None and r["theta"] <= 0.25:
            raw = next(x for x in rows if x["budget"] is None and
                       all(x[k] == r[k] for k in ("filler", "arm", "theta", "pairs")))
            assert r["accuracy"] == raw["accuracy"], r
    peaks = {(p["depth"], p["theta"], p["budget"]): p["peak"] for p in payload["repeated_key"]}
    assert peaks[(2, 0.25, None)] is None or peaks[(2, 0.25, None)] > 1e3
    assert peaks[(2, 0.25, 0.5)] < 2.0
    text = (tmp_path / "capacity.md").read_text()
    assert "| delta rule |" in text and "One key through 4 chunks" in text
