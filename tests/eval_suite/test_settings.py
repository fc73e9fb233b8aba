"""Evaluation settings are range-checked when read, naming the key: out-of-range values used to drop
items silently (a negative limit slices from the end) or fail late with a traceback."""

import re

import pytest

from titans_eval_suite import settings
from titans_pretrain.config import ConfigError
from tests.helpers import ROOT


@pytest.mark.parametrize("override, expected", [
    ("run.batch_size=0", "run.batch_size must be a number >= 1, got 0"),
    ("run.batch_size=-1", "run.batch_size must be a number >= 1, got -1"),
    ("run.tasks=[]", "run.tasks must be a non-empty list of task names"),
    ('run.tasks=[" lambada"]', "run.tasks must be a non-empty list of task names"),
    ("perplexity.limit=-1", "perplexity.limit must be a number >= 1, got -1"),
    ("perplexity.limit=0", "perplexity.limit must be a number >= 1, got 0"),
    ("perplexity.stride=-2", "perplexity.stride must be a number >= 0, got -2"),
    ("harness.limit=0", "harness.limit must be a number of documents (an integer >= 1) or a fraction in (0, 1)"),
    ("harness.limit=2.5", "harness.limit must be a number of documents"),
    ("harness.num_fewshot=-1", "harness.num_fewshot must be a number >= 0"),
    ("needle.samples=0", "needle.samples must be a number >= 1, got 0"),
    ("needle.max_new_tokens=0", "needle.max_new_tokens must be a number >= 1, got 0"),
    ("babilong.samples=0", "babilong.samples must be a number >= 1, got 0"),
    ("babilong.max_new_tokens=-3", "babilong.max_new_tokens must be a number >= 1, got -3"),
])
def test_out_of_range_values_name_the_key(override, expected):
    with pytest.raises(ConfigError, match="^" + re.escape(f"command line: {expected}")):
        settings.load(None, [override])


def test_values_in_range_and_the_shipped_configs_pass():
    config = settings.load(None, ["harness.limit=0.25", "perplexity.stride=0", "babilong.samples=null",
                                  "perplexity.limit=1"])
    assert (config.harness.limit, config.perplexity.stride, config.babilong.samples) == (0.25, 0, None)
    assert settings.load(None, ["harness.limit=3"]).harness.limit == 3
    for name in ("paper.json", "tiny.json"):
        settings.load(str(ROOT / "configs" / "eval" / name))
