"""The memory op the branches call (titans_kernels.neural_memory: Triton on CUDA, torch elsewhere)."""

from titans_kernels import neural_memory
from titans_kernels.memory_op.mlp import mlp_forward

__all__ = ["neural_memory", "mlp_forward"]
