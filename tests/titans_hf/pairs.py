"""A Megatron model and the Hugging Face model holding its weights, and token ids to feed both
(shared by the model and export tests)."""

import torch

import titans_hf
from titans_hf.convert import hf_config, hf_state_dict
from titans_megatron import build_model
from tests.titans_megatron.model_configs import small_config

HF_VARIANTS = ["transformer++", "lmm", "mag", "mal", "mal-res", "mac", "mac-own", "gdn"]


def pair(variant, seed=3, **overrides):
    """(config, Megatron model, Hugging Face model) with the same weights, both in eval mode."""
    config = small_config(variant, **overrides)
    megatron = build_model(config, seed=seed).eval()
    model = titans_hf.TitansForCausalLM(hf_config(config)).eval()
    missing, unexpected = model.load_state_dict(hf_state_dict(megatron.state_dict(), config), strict=True)
    assert not missing and not unexpected
    return config, megatron, model


def ids(config, length, batch=2, seed=0):
    return torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
