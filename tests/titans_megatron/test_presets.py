"""Every preset of every variant builds, lands within 10% of its nominal size, and the README says so."""

import pathlib

import pytest

from titans_megatron.preset_table import parameter_count
from titans_megatron.presets import NOMINAL, SIZES

README = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
CASES = [(name, variant) for name in SIZES for variant in SIZES[name][3]]


@pytest.mark.parametrize("name,variant", CASES)
def test_preset_size_and_readme(name, variant):
    n = parameter_count(name, variant)
    if name in NOMINAL:
        assert abs(n / NOMINAL[name] - 1) <= 0.10, f"{name} {variant}: {n:,} parameters"
    assert f"{SIZES[name][3][variant]} blocks, {n:,}" in README, f"README lacks the count of {name} {variant} ({n:,})"
