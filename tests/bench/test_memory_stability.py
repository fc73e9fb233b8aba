"""The stability-map script in its smoke configuration: where the bound is known (depth 1, one key
repeated), the bisected theta matches it; the momentum average (ema) is never less stable."""

import json
import os
import subprocess
import sys

import pytest

from tests.bench.scripts import ROOT

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def test_stability_map_matches_the_known_bounds(tmp_path):
    out = tmp_path / "stability"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "memory_stability.py"), "--config",
                             str(ROOT / "configs" / "bench" / "memory_stability_smoke.json"), "--output", str(out)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "stability.json").read_text())["rows"]
    checked = 0
    for r in rows:
        if r["known"] is not None:
            # 1024 tokens and a 1000x blow-up threshold: a slowly growing error passes for up to ~6% above the bound.
            assert r["known"] * 0.97 <= r["theta"] <= r["known"] * 1.08, r
            checked += 1
    assert checked >= 5
    for r in rows:
        if r["form"] == "literal" and r["momentum"] > 0:
            ema = next(e for e in rows if e["form"] == "ema" and
                       all(e[k] == r[k] for k in ("stream", "depth", "chunk", "momentum")))
            assert ema["theta"] >= r["theta"] * 0.99
    assert "| 1 | 16 |" in (tmp_path / "stability.md").read_text()
