"""Small configs for model tests (seconds on CPU)."""

import warnings

from titans_megatron import TitansConfig

VARIANTS = ["transformer++", "lmm", "mag", "mal", "mal-res", "mac", "mac-own", "gdn"]
# Test names for a variant with a non-default option: (variant, config fields).
OPTIONS = {"mac-own": ("mac", {"mac_retrieval": "own_query"}), "mal-res": ("mal", {"mal_residual": True})}


def small_config(variant, **overrides):
    warnings.filterwarnings("ignore", module="megatron")
    fields = dict(hidden_size=64, num_attention_heads=2, ffn_hidden_size=128, num_layers=2, vocab_size=97,
                  seq_length=64, window_size=16, segment_length=16, num_memory_tokens=4,
                  num_persistent_tokens=4, memory_chunk_size=4)
    variant, options = OPTIONS.get(variant, (variant, {}))
    fields.update(options, **overrides)
    return TitansConfig.from_preset("tiny", variant=variant, **fields)
