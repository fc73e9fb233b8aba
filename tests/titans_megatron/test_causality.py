"""Changing token j changes no logit at a position before j, in every variant (TITANS_SPEC section 3)."""

import pytest
import torch

from titans_megatron import build_model
from tests.titans_megatron.model_configs import VARIANTS, small_config


@pytest.mark.parametrize("variant", VARIANTS)
def test_perturbing_a_token_changes_no_earlier_logit(variant):
    config = small_config(variant)
    model = build_model(config, seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (2, config.seq_length), generator=g)
    with torch.no_grad():
        base = model(ids)
        # positions inside a segment / chunk, at a segment start, and at the very end
        for j in (5, 16, 37, 63):
            changed = ids.clone()
            changed[:, j] = (changed[:, j] + 1 + torch.randint(0, config.vocab_size - 1, (2,), generator=g)) % config.vocab_size
            out = model(changed)
            torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-6,
                                       msg=lambda m: f"{variant}: token {j} changed an earlier logit: {m}")
            assert (out[:, j:] - base[:, j:]).abs().max() > 1e-4, f"{variant}: token {j} changed nothing after it"
