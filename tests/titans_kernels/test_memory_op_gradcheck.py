"""torch.autograd.gradcheck of every backend at tiny sizes (the torch backend's backward is hand-derived)."""

import pytest
import torch

from titans_kernels import neural_memory
from tests.titans_kernels.memory_inputs import leaves, make_inputs


@pytest.mark.parametrize("carried", [False, True], ids=["init", "carried"])
@pytest.mark.parametrize("depth", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize("backend", ["torch", "sequential"])
def test_gradcheck(backend, depth, carried):
    batch = 2 if depth == 1 else 1  # the deeper memories at one sequence: gradcheck's cost is quadratic in the inputs
    inputs = make_inputs(batch, 5, 2, 3, depth, expansion=1, carried=carried, seed=depth, lr_max=0.5,
                         requires_grad=True)
    names = [k for k, x in inputs.items() if x is not None]
    sizes = [len(inputs[k]) if isinstance(inputs[k], tuple) else None for k in names]
    flat = leaves(inputs)

    def fn(*tensors):
        it = iter(tensors)
        kwargs = {k: (tuple(next(it) for _ in range(n)) if n else next(it)) for k, n in zip(names, sizes)}
        out, (W, S) = neural_memory(**kwargs, chunk_size=2, backend=backend)
        return (out, *W, *S)

    assert torch.autograd.gradcheck(fn, flat, eps=1e-6, atol=1e-6, rtol=1e-5)
