"""make gpu-check cannot rot: its dry run (CPU, smoke configs) runs the steps and writes the summary,
and every GPU step's config holds the keys of the smoke config its script is tested with."""

import json
import subprocess
import sys

import pytest

from tests.bench.scripts import ROOT, load_script

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

CONFIG = json.loads((ROOT / "configs" / "bench" / "gpu_check.json").read_text())


def test_dry_run_writes_the_summary(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--output-dir",
                           str(tmp_path), "--steps", "gpu_tests", "train_step"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "gpu_check_dryrun.md").read_text()
    assert "| gpu_tests | exit 0 |" in summary and "skipped" in summary  # the GPU tests skip on CPU
    assert "| train_step | exit 0 |" in summary and "| | | | " in summary  # its targets, n/a on CPU
    assert (tmp_path / "train_step_gpu_dryrun.md").is_file()
    steps = json.loads((tmp_path / "gpu_check_dryrun.json").read_text())["steps"]
    assert [s["name"] for s in steps] == ["gpu_tests", "train_step"]


@pytest.mark.parametrize("step", [s for s in CONFIG["steps"] if s["kind"] == "bench"], ids=lambda s: s["name"])
def test_gpu_step_configs_hold_the_smoke_configs_keys(step):
    gpu = json.loads((ROOT / step["config"]).read_text())
    smoke = json.loads((ROOT / step["dry_config"]).read_text())
    assert set(smoke) <= set(gpu), f"{step['config']} lacks {sorted(set(smoke) - set(gpu))}"
    assert gpu["device"] == "cuda" and (ROOT / step["script"]).is_file()


def test_card_names():
    slug = load_script("gpu_check").card_slug
    assert [slug(n) for n in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA B200")] == \
        ["h100", "h200", "a100", "b200"]
