"""What autograd keeps for backward grows with T by O(d_h) per token, not by the memory's size."""

import torch

from titans_kernels import neural_memory
from titans_kernels.memory_op.torch_backend import KEPT_STATE_PER_TOKEN_IN_HEAD_DIMS
from tests.titans_kernels.memory_inputs import make_inputs


def saved_bytes(T, d, depth, expansion, chunk):
    """Bytes of distinct storages autograd saves for one forward of the torch backend."""
    inputs = make_inputs(1, T, 2, d, depth, expansion=expansion, dtype=torch.float32, seed=0, requires_grad=True)
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = neural_memory(**inputs, chunk_size=chunk, backend="torch")
    return sum(storages.values())


def test_saved_memory_per_token_is_order_head_dim():
    d, depth, E, chunk, H = 16, 2, 4, 16, 2
    small, large = 1024, 4096
    per_token_head = (saved_bytes(large, d, depth, E, chunk) - saved_bytes(small, d, depth, E, chunk)) / (large - small) / H
    inputs_bytes = (3 * d + 3) * 4                         # q, k, v and three gates, fp32
    state_bound = KEPT_STATE_PER_TOKEN_IN_HEAD_DIMS * d * 4  # checkpointed W and S
    assert per_token_head <= inputs_bytes + state_bound
    # for scale: keeping the state of every chunk would cost 2 * params * 4 / chunk bytes per token
    params = 2 * E * d * d
    assert per_token_head < 0.5 * (2 * params * 4 / chunk)


def test_saved_memory_independent_of_memory_size():
    """Quadrupling the expansion (4x the parameters) does not change the per-token cost beyond rounding."""
    d, chunk, T = 16, 16, 4096
    small = saved_bytes(T, d, 2, 1, chunk)
    large = saved_bytes(T, d, 2, 4, chunk)
    assert abs(large - small) / small < 0.05
