"""bench/memory_kernel.py runs end to end in its CPU smoke configuration and states its FLOP model."""

import json
import subprocess
import sys

import pytest

from tests.bench.scripts import ROOT, load_script

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def test_flop_model_is_the_issue_formula():
    bench = load_script("memory_kernel")
    for d, C in ((64, 16), (128, 32)):
        assert bench.memory_forward_flops(d, 2, 4, C) == 88 * d * d + 20 * C * d
    assert bench.memory_forward_flops(64, 1, 4, 16) == 10 * 64 * 64 + 4 * 16 * 64


def test_smoke_run_writes_a_report(tmp_path):
    pytest.importorskip("triton", reason="the kernels need the triton package")
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "bench/memory_kernel.py", "--config", "configs/bench/memory_kernel_smoke.json",
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.with_suffix(".json").read_text())
    config = json.loads((ROOT / "configs" / "bench" / "memory_kernel_smoke.json").read_text())
    rows = result["rows"]
    assert len(rows) == len(config["T"]) * len(config["heads_x_head_dim"]) * len(config["impls"])
    for impl in ("triton", "torch", "sdpa-causal"):  # always runnable on CPU
        measured = [r for r in rows if r["impl"] == impl]
        assert measured and all("error" not in r and r["tokens_per_s"] > 0 for r in measured), measured
    assert all(r["tflops"] > 0 and r["gbytes_per_s"] > 0 for r in rows if r["impl"] == "triton")
    assert result["meta"]["interpreter"] is True
    report = out.with_suffix(".md").read_text()
    assert "smoke run" in report and "Targets" in report
    assert "ETA" in proc.stderr  # progress lines
