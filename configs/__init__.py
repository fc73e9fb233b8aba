"""The configuration files (JSON), importable as ``titans_configs`` so that a default such as
configs/eval/paper.json resolves in a non-editable install too, wherever the command starts."""

import os

CONFIGS = os.path.dirname(os.path.abspath(__file__))


def config_path(*parts: str) -> str:
    """The path of a shipped config file, e.g. ``config_path("eval", "paper.json")``."""
    return os.path.join(CONFIGS, *parts)
