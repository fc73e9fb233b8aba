"""bench/hf_generate.py runs every variant end to end in its CPU smoke configuration: the Hugging Face
model generates the tokens of our streaming API, and only Transformer++'s cache grows with the prompt."""

import json
import math
import subprocess
import sys

import pytest

from tests.bench.scripts import ROOT

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

SMOKE = ROOT / "configs" / "bench" / "hf_generate_smoke.json"


def test_smoke_run_writes_a_report(tmp_path):
    config = {**json.loads(SMOKE.read_text()), "new_tokens": 8, "repeats": 1, "warmup": 0}
    (tmp_path / "smoke.json").write_text(json.dumps(config))
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "bench/hf_generate.py", "--config", str(tmp_path / "smoke.json"),
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["variant"], r["prompt_length"]) for r in rows] == [
        (v, n) for v in config["variants"] for n in config["prompt_lengths"]]
    for r in rows:
        assert "hf_error" not in r and "ours_error" not in r, r
        assert math.isfinite(r["hf_tokens_per_s"]) and r["hf_tokens_per_s"] > 0 and r["same_tokens"] is True, r
    cache = {v: [r["cache_bytes"] for r in rows if r["variant"] == v] for v in ("mag", "gdn", "transformer++")}
    assert len(set(cache["mag"])) == 1 and len(set(cache["gdn"])) == 1, cache
    assert cache["transformer++"][0] < cache["transformer++"][1], cache
    assert "| variant | prompt | HF tokens/s |" in out.with_suffix(".md").read_text()
