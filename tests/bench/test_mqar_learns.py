"""A reduced MQAR run (slow, ~1.5 minutes on 2 cores): a memory written while reading recalls pairs two
attention windows back, and the same model whose memory never learns (lr_max 0, no forgetting: no
history at all) stays at chance. The linear memory stands in for the default deep one here: it learns
this point within a test's budget (0.52 at 300 steps, seeds 0 and 1; its floor 0.057 and 0.053, chance
0.0625), the deep memory did not at the old lr_max 0.02 (0.35 at 800 steps; docs/model.md)."""

import argparse
import importlib
import json

import pytest

from tests.bench.scripts import ROOT

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


@pytest.mark.slow
def test_memory_recalls_two_windows_back():
    mq = importlib.import_module("bench.mqar")  # by its importable name: the worker processes unpickle from it
    cfg = json.loads((ROOT / "configs" / "bench" / "mqar_small.json").read_text())
    chance = 1 / cfg["task"]["value_vocab"]
    # the two arms side by side, a process and a thread each (the bench's --workers 2 --threads 1)
    todo = [(arm, 2, 2, 0) for arm in ("lmm-linear", "lmm-linear-off")]
    runs = {point[0]: result for point, result in
            mq.train_points(todo, cfg, argparse.Namespace(workers=2, threads=1, device="cpu"))}
    on, off = runs["lmm-linear"]["accuracy"], runs["lmm-linear-off"]["accuracy"]
    assert off < chance + 0.05, f"a memory with no history should be at chance ({chance:.3f}), got {off:.3f}"
    assert on > off + 0.35, f"memory on {on:.3f} vs off {off:.3f}"
