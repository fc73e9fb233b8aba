"""Invalid configurations fail at construction with a message naming the problem."""

import pytest

from titans_megatron import TitansConfig
from tests.titans_megatron.model_configs import small_config

CASES = {
    "heads vs tp": (dict(tensor_model_parallel_size=3), r"num_attention_heads \(2\) must be a multiple of tensor_model_parallel_size \(3\)"),
    "window too long": (dict(variant="mag", window_size=65), r"window_size \(65\) must be in \[1, seq_length = 64\]"),
    "segment too long": (dict(variant="mac", segment_length=128), r"segment_length \(128\) must be in \[1, seq_length = 64\]"),
    "segment not dividing": (dict(variant="mac", segment_length=24), r"seq_length \(64\) must be a multiple of segment_length \(24\)"),
    "memory tokens": (dict(variant="mac", num_memory_tokens=17), r"num_memory_tokens \(17\) cannot exceed segment_length \(16\)"),
    "segment vs chunk": (dict(variant="mac", memory_chunk_size=5), r"segment_length \(16\) must be a multiple of memory_chunk_size \(5\)"),
    "chunk zero": (dict(memory_chunk_size=0), r"memory_chunk_size must be >= 1, got 0"),
    "memory backend": (dict(memory_backend="cuda"),
                       r"memory_backend must be one of \['auto', 'sequential', 'torch', 'triton'\], got 'cuda'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_config(case):
    overrides, message = CASES[case]
    variant = overrides.pop("variant", "lmm")
    with pytest.raises(ValueError, match=message):
        small_config(variant, **overrides)


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"variant must be one of \['lmm', 'mac', 'mag', 'mal', 'transformer\+\+', 'gdn'\], got 'mamba'"):
        TitansConfig(num_layers=1, hidden_size=8, num_attention_heads=2, variant="mamba")
    with pytest.raises(ValueError, match=r"unknown variant 'mamba'"):
        TitansConfig.from_preset("tiny", variant="mamba")


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'"):
        TitansConfig.from_preset("huge")
    with pytest.raises(ValueError, match=r"unknown TitansConfig field\(s\): \['windw'\]"):
        TitansConfig.from_preset("tiny", windw=3)


def test_window_ignored_by_variants_without_sliding_window():
    """A window longer than the sequence is fine where no sliding window exists (LMM, MAC, T++)."""
    assert small_config("lmm", window_size=4096).window_size == 4096


def test_memory_lr_max_defaults_to_one_over_the_chunk():
    """lr_max <= 1/C keeps the chunked memory bounded for every eta under the momentum average
    (docs/model.md, stability map): the default follows the chunk size; an explicit value stays."""
    assert TitansConfig.from_preset("tiny", "lmm", memory_chunk_size=32, segment_length=64).memory_lr_max == 1 / 32
    assert TitansConfig.from_preset("tiny", "lmm").memory_lr_max == 1 / 16
    assert TitansConfig.from_preset("tiny", "lmm", memory_lr_max=0.02).memory_lr_max == 0.02
    with pytest.raises(ValueError, match="memory_lr_max"):
        TitansConfig.from_preset("tiny", "lmm", memory_lr_max=-1.0)
