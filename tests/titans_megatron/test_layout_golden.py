"""The model's checkpoint layout and seeded weights stay what they were when the goldens were written:
parameter names, shapes, tensor-parallel axes and a hash of every weight per variant. Checkpoints (and
Hugging Face exports) depend on these names; a refactor of the modules must leave them unchanged.

Regenerate (only for a deliberate layout change, said in the commit): TITANS_WRITE_GOLDEN=1 pytest this file.
"""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from titans_megatron import build_model
from tests.titans_megatron.model_configs import VARIANTS, small_config

GOLDEN = Path(__file__).parent / "golden" / "layout.json"


def layout(variant):
    model = build_model(small_config(variant), seed=0)
    sharded = model.sharded_state_dict()
    params = dict(model.named_parameters())
    out = {}
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        p = params.get(name)
        split = getattr(p, "partition_dim", None) if getattr(p, "tensor_model_parallel", False) else None
        axes = [type(sharded[name]).__name__, split, getattr(p, "sequence_parallel", None)]
        digest = hashlib.sha256(tensor.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]
        out[name] = {"shape": list(tensor.shape), "sharded": axes, "sha": digest}
    return out


@pytest.fixture(scope="module")
def golden():
    if os.environ.get("TITANS_WRITE_GOLDEN"):
        GOLDEN.write_text(json.dumps({v: layout(v) for v in VARIANTS}, indent=1, sort_keys=True))
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("variant", VARIANTS)
def test_layout_and_seeded_weights_are_unchanged(golden, variant):
    now, before = layout(variant), golden[variant]
    assert sorted(now) == sorted(before), f"{variant}: parameter names changed"
    for name in before:
        assert now[name] == before[name], f"{variant} {name}: {now[name]} != {before[name]}"
