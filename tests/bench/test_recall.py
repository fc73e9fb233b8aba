"""A reduced recall run (slow, ~3 minutes): the memory learns at test time.

256-token sequences with a window of 32: pairs at the start, questions at the end, ~220 filler tokens
between. LMM with its memory must beat the same model whose memory never learns (lr_max 0), which
stays at chance. The full experiment is bench/recall.py with configs/bench/recall.json.
"""

import json

import pytest

from tests.bench.scripts import ROOT, load_script


@pytest.mark.slow
def test_memory_recalls_beyond_the_window():
    recall = load_script("recall")
    config = json.loads((ROOT / "configs" / "bench" / "recall_small.json").read_text())
    chance = 1 / config["task"]["value_vocab"]
    on = recall.train_and_evaluate(config, "lmm", True, log=lambda line: None)["accuracy"]
    off = recall.train_and_evaluate(config, "lmm", False, log=lambda line: None)["accuracy"]
    assert off < chance + 0.06, f"without a learning memory recall should be chance ({chance:.3f}), got {off:.3f}"
    assert on > off + 0.12, f"memory on {on:.3f} vs off {off:.3f}"
