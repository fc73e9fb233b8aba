"""The evaluation's configuration: sections of dataclasses read from a JSON file (configs/eval/), over
its ``base`` chain, overridden with ``--set section.key=value``; checked key by key before any work, as
the training configuration is (pretrain/config.py holds the machinery: a value out of its field's range
is a ConfigError "section.key must be ..., got ...")."""

from dataclasses import asdict, dataclass, field
from typing import List, Optional

from titans_pretrain.config import at_least, rule

LOCAL_TASKS = ("wikitext103", "lambada", "needle", "babilong")


def _names(value) -> bool:
    return len(value) > 0 and all(isinstance(v, str) and v.strip() == v and v for v in value)


@dataclass
class RunSection:
    tasks: List[str] = rule(_names, "a non-empty list of task names (no blanks or surrounding spaces)",
                            lambda: list(LOCAL_TASKS))
    """Our tasks (wikitext103, lambada, needle, babilong) and lm-evaluation-harness task names."""
    batch_size: int = at_least(1, 8)
    """Sequences per forward when scoring."""


@dataclass
class PerplexitySection:
    stride: Optional[int] = at_least(0, None)
    """WikiText-103 target block: None = the training context (disjoint windows), 0 = stream whole articles;
    at most each checkpoint's training context (checked against every checkpoint before any loads)."""
    limit: Optional[int] = at_least(1, None)
    """The first N articles / passages (None: all)."""


def _harness_limit(value: float) -> bool:
    return 0 < value < 1 or (value >= 1 and value == int(value))  # lm-eval: a fraction below 1, else a count


@dataclass
class HarnessSection:
    num_fewshot: int = at_least(0, 0)
    limit: Optional[float] = rule(_harness_limit, "a number of documents (an integer >= 1) or a fraction in (0, 1)",
                                  lambda: None)
    """Documents per task (an int), or a fraction."""
    include_path: Optional[str] = None
    """A folder of extra task YAMLs (local data files)."""


@dataclass
class NeedleSection:
    kinds: List[str] = field(default_factory=lambda: ["passkey", "number", "word"])
    lengths: List[int] = field(default_factory=lambda: [2048, 4096, 8192, 16384])
    """Prompt lengths in tokens of the checkpoint's tokenizer (2K up to 1M)."""
    depths: List[float] = field(default_factory=lambda: [0, 25, 50, 75, 100])
    """The needle's position in the haystack, percent."""
    samples: int = at_least(1, 4)
    seed: int = 0
    max_new_tokens: int = at_least(1, 12)
    haystack: Optional[str] = None
    """A text file of essays for the number and word kinds (default: the shipped corpus)."""


@dataclass
class BabilongSection:
    tasks: List[str] = field(default_factory=lambda: ["qa1", "qa2", "qa3", "qa4", "qa5"])
    lengths: List[str] = field(default_factory=lambda: ["0k", "1k", "2k", "4k"])
    samples: Optional[int] = at_least(1, 100)
    """The first N samples of each file (None: all)."""
    max_new_tokens: int = at_least(1, 16)


@dataclass
class EvalConfig:
    run: RunSection = field(default_factory=RunSection)
    perplexity: PerplexitySection = field(default_factory=PerplexitySection)
    harness: HarnessSection = field(default_factory=HarnessSection)
    needle: NeedleSection = field(default_factory=NeedleSection)
    babilong: BabilongSection = field(default_factory=BabilongSection)

    def as_dict(self) -> dict:
        return asdict(self)


def load(path: Optional[str], overrides: List[str] = ()) -> EvalConfig:
    from titans_pretrain.config import load_config

    return load_config(path, overrides, config=EvalConfig())
