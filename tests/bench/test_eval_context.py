"""bench/eval_context.py runs every variant at every context length end to end in its CPU smoke
configuration: streaming gives the full forward's logits, and only Transformer++'s state grows."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.bench.scripts import ROOT, load_script

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

SMOKE = ROOT / "configs" / "bench" / "eval_context_smoke.json"


def test_smoke_run_writes_a_report(tmp_path):
    # The smoke configuration at two short lengths and one repeat: the committed smoke results take
    # 16 s on a quiet 2-core machine, but over ten minutes when other jobs share it.
    config = {**json.loads(SMOKE.read_text()), "lengths": [256, 512], "repeats": 1}
    (tmp_path / "smoke.json").write_text(json.dumps(config))
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "bench/eval_context.py", "--config", str(tmp_path / "smoke.json"),
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["variant"], r["length"]) for r in rows] == [(v, n) for v in config["variants"] for n in config["lengths"]]
    for r in rows:
        for path in ("full", "stream"):
            assert f"{path}_error" in r or (math.isfinite(r[f"{path}_tokens_per_s"]) and r[f"{path}_tokens_per_s"] > 0), r
        if "full_error" not in r and "stream_error" not in r:
            assert r["logits_match"] is True, r
    state = {v: [r["state_bytes"] for r in rows if r["variant"] == v] for v in ("mag", "transformer++")}
    assert len(set(state["mag"])) == 1 and state["mag"][0] > 0, state
    assert all(a < b for a, b in zip(state["transformer++"], state["transformer++"][1:])), state
    report = out.with_suffix(".md").read_text()
    assert "CPU smoke run" in report and "| variant | L | full tokens/s | stream tokens/s |" in report
    assert report.count("\n| ") == 1 + len(rows)  # header + one line per row
    assert "ETA" in proc.stderr


def test_config_missing_a_key_is_refused(tmp_path):
    config = json.loads(SMOKE.read_text())
    del config["lengths"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="missing keys \\['lengths'\\]"):
        load_script("eval_context").load_config(str(path))


class _FullForwardOutOfMemory(torch.nn.Module):
    """Streams (a state of 12 bytes per token seen) but runs out of memory on a whole sequence."""

    config = SimpleNamespace(vocab_size=8)

    def forward(self, input_ids):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    def stream(self, piece, state=None):
        seen = (0 if state is None else state["k"].shape[0]) + piece.shape[1]
        return torch.zeros(*piece.shape, 8), {"k": torch.zeros(seen, 3)}


def test_full_forward_out_of_memory_is_the_rows_error_and_streaming_still_runs():
    cfg = {**json.loads(SMOKE.read_text()), "warmup": 0, "repeats": 1}
    row = {}
    load_script("eval_context").measure(_FullForwardOutOfMemory(), 512, cfg, torch.device("cpu"), row)
    assert row["full_error"] == "out of memory" and "full_tokens_per_s" not in row
    assert row["stream_tokens_per_s"] > 0 and row["state_bytes"] == 512 * 3 * 4
    assert "logits_match" not in row and "stream_over_full" not in row
