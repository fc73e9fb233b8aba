"""Functional ops of Titans: the neural-memory update and its backends (no model, no config)."""

from titans_kernels.memory_op import available_backends, neural_memory

__all__ = ["neural_memory", "available_backends"]
