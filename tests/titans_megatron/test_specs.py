"""The mixers' linear layers come through their spec (as Megatron's own mixers take theirs): swapping
the classes in the spec swaps every projection of every variant, and the model still runs."""

import pytest
import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

from titans_megatron import build_model, specs
from titans_core.mixers import Mixer
from titans_megatron.parallel import MixerSubmodules
from tests.titans_megatron.model_configs import small_config


class TaggedColumn(ColumnParallelLinear):
    pass


class TaggedRow(RowParallelLinear):
    pass


@pytest.mark.parametrize("variant", ["lmm", "mag", "mal", "mal-res", "mac", "mac-own", "transformer++"])
def test_spec_names_every_mixer_linear(variant, monkeypatch):
    monkeypatch.setattr(specs, "MIXER_LINEARS", MixerSubmodules(column_linear=TaggedColumn, row_linear=TaggedRow))
    model = build_model(small_config(variant), seed=0)
    mixers = [m for m in model.modules() if isinstance(m, Mixer)]
    assert mixers
    for mixer in mixers:
        for name, module in mixer.named_modules():
            if isinstance(module, ColumnParallelLinear):
                assert type(module) is TaggedColumn, f"{variant}: {name} is {type(module).__name__}"
            if isinstance(module, RowParallelLinear):
                assert type(module) is TaggedRow, f"{variant}: {name} is {type(module).__name__}"
    with torch.no_grad():
        logits = model(torch.randint(0, 97, (1, 32), generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(logits).all()
