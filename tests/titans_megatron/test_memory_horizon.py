"""At initialisation the memory already spans thousands of tokens: a token 500 positions before the
last still moves the last logit, in every Titans variant, at the default gate initialisation (the
forget gate spread across heads). With the old single forget rate (alpha 0.018 in every head, a
~55-token horizon) the same probe moved nothing above float noise: the control below keeps this test
able to fail."""

import pytest
import torch

from titans_megatron import build_model
from titans_megatron.branches import initial_gate_bias, spread_across_heads
from tests.titans_megatron.model_configs import small_config

T, BACK = 640, 500


def relative_change_of_last_logit(variant, **overrides):
    # window/segment 64 < BACK: attention cannot see the perturbed token from the last position.
    config = small_config(variant, seq_length=T, window_size=64, segment_length=64, num_memory_tokens=8,
                          memory_chunk_size=16, **overrides)
    model = build_model(config, seed=0).eval()
    ids = torch.randint(0, config.vocab_size, (4, T), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, T - 1 - BACK] = (changed[:, T - 1 - BACK] + 1) % config.vocab_size
    with torch.no_grad():
        a, b = model(ids)[:, -1], model(changed)[:, -1]
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize("variant", ["lmm", "mag", "mal", "mac"])
def test_a_token_500_back_moves_the_last_logit_at_init(variant):
    assert relative_change_of_last_logit(variant) > 1e-4  # float noise is ~1e-7


def test_one_short_forget_rate_forgets_within_500_tokens():
    assert relative_change_of_last_logit("lmm", memory_forget_init=(0.018, 0.018)) < 1e-5


def test_gate_initialisation_spread():
    config = small_config("lmm", num_attention_heads=4, memory_forget_init=(1e-4, 1e-2), memory_lr_init=(0.2, 0.8))
    bias = initial_gate_bias(config)
    torch.testing.assert_close(torch.sigmoid(bias[:, 2].double()), torch.logspace(-4, -2, 4, dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(spread_across_heads((1e-4, 1e-2), 3), torch.tensor([1e-4, 1e-3, 1e-2], dtype=torch.float64))
    torch.testing.assert_close(spread_across_heads((0.2, 0.8), 1), torch.tensor([0.4], dtype=torch.float64))
    torch.testing.assert_close(torch.sigmoid(bias[:, 1]), torch.full((4,), 0.5))
    torch.testing.assert_close(torch.sigmoid(bias[:, 0]).double(), spread_across_heads((0.2, 0.8), 4), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="memory_forget_init"):
        small_config("lmm", memory_forget_init=(0.0, 0.1))
