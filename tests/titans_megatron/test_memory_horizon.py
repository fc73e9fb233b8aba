"""At initialisation the memory already spans thousands of tokens: a token 500 positions before the
last still moves the last logit, in every Titans variant, at the default gate initialisation (the
forget gate spread across heads). With the old single forget rate (alpha 0.018 in every head, a
~55-token horizon) the same probe moved nothing above float noise: the control below keeps this test
able to fail."""

import pytest
import torch

from titans_megatron import build_model
from titans_core.branches import initial_gate_bias, spread_across_heads
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


def test_a_memory_that_never_learns_carries_no_history_only_without_forgetting():
    """The recall benchmark's LMM floor. With theta = 0 the forget gate still scales the weights by
    prod (1 - alpha_t), a product over every earlier token that a deep memory's non-linearity turns
    into a readable summary of the past (measured: an LMM trained with lr_max 0 scored 0.22 on 2-pair
    MQAR, chance 0.06). Only lr_max 0 with forgetting off is a memory with no history."""
    leaky = relative_change_of_last_logit("lmm", memory_lr_max=0.0)
    assert leaky > 1e-6  # small at initialisation, and bit-exactly zero without forgetting
    assert relative_change_of_last_logit("lmm", memory_lr_max=0.0, memory_forgetting=False) == 0.0
