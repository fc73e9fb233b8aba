"""A reduced MQAR run (slow, ~3-4 minutes): a memory written while reading recalls pairs two attention
windows back, and the same model whose memory never learns (lr_max 0, no forgetting: no history at
all) stays at chance. The linear memory stands in for the default deep one here: it learns this point
within a test's budget (0.86 at 600 steps), the deep memory does not yet (0.30; docs/model.md)."""

import json

import pytest

from tests.bench.scripts import ROOT, load_script

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


@pytest.mark.slow
def test_memory_recalls_two_windows_back():
    mq = load_script("mqar")
    cfg = json.loads((ROOT / "configs" / "bench" / "mqar_small.json").read_text())
    chance = 1 / cfg["task"]["value_vocab"]
    runs = {arm: mq.run_point(cfg, arm, pairs=2, gap_windows=2, seed=0, log=lambda line: None)
            for arm in ("lmm-linear", "lmm-linear-off")}
    on, off = runs["lmm-linear"]["accuracy"], runs["lmm-linear-off"]["accuracy"]
    assert off < chance + 0.05, f"a memory with no history should be at chance ({chance:.3f}), got {off:.3f}"
    assert on > off + 0.35, f"memory on {on:.3f} vs off {off:.3f}"
