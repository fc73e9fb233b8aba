"""The memory op the branches call (kernels.neural_memory: Triton on CUDA, torch elsewhere)."""

from kernels import neural_memory
from kernels.memory_op.mlp import mlp_forward

__all__ = ["neural_memory", "mlp_forward"]
