"""The Titans model on Megatron-core: config and presets, memory mixer, attention core, layer specs."""

from titans_megatron.config import TitansConfig
from titans_megatron.model import TitansLM, build_model

__all__ = ["TitansConfig", "TitansLM", "build_model"]
