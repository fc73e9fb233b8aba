"""Streaming a sequence piece by piece gives the logits of one full forward, for every variant."""

import pytest
import torch

from titans_megatron import build_model
from tests.titans_megatron.model_configs import VARIANTS, small_config


def _stream(model, ids, sizes):
    state, outs, start = None, [], 0
    for size in sizes:
        logits, state = model.stream(ids[:, start:start + size], state)
        outs.append(logits)
        start += size
    assert start == ids.shape[1]
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("variant", VARIANTS)
def test_stream_equals_full_forward(variant):
    config = small_config(variant)
    model = build_model(config, seed=2)
    ids = torch.randint(0, config.vocab_size, (2, 96), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
    # pieces that cross chunk (4), segment (16) and window (16) boundaries, single tokens included
    for sizes in ([96], [1] * 20 + [76], [7, 9, 16, 33, 5, 26], [16] * 6):
        streamed, _ = _stream(model, ids, sizes)
        torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5, msg=lambda m: f"{variant} {sizes}: {m}")


@pytest.mark.parametrize("variant", ["lmm", "mag", "mal", "mac", "gdn"])
def test_stream_state_is_constant_in_context_length(variant):
    config = small_config(variant)
    model = build_model(config)
    ids = torch.randint(0, config.vocab_size, (1, 320), generator=torch.Generator().manual_seed(1))

    def state_numel(state):
        total = 0
        for value in (state.values() if isinstance(state, dict) else state):
            if isinstance(value, torch.Tensor):
                total += value.numel()
            elif isinstance(value, (dict, tuple, list)):
                total += state_numel(value)
        return total

    _, short = _stream(model, ids[:, :160], [32] * 5)
    _, long = _stream(model, ids, [32] * 10)
    assert state_numel(long) == state_numel(short) > 0


def test_transformer_pp_keeps_every_key():
    config = small_config("transformer++")
    model = build_model(config)
    ids = torch.randint(0, config.vocab_size, (1, 40))
    _, state = model.stream(ids)
    assert state[0]["attention"]["k"].shape[2] == 40
