"""Invalid arguments raise a ValueError that says what was expected."""

import pytest
import torch

from titans_kernels import neural_memory
from tests.titans_kernels.memory_inputs import make_inputs


def _inputs():
    return make_inputs(2, 9, 3, 4, 2, seed=0)  # B 2, T 9, H 3, d_h 4, hidden 8


def _call(**changes):
    kwargs = {**_inputs(), "chunk_size": 4, "backend": "torch", **changes}
    return neural_memory(**kwargs)


CASES = {
    "q rank": (lambda x: {"q": x["q"][0]}, r"q must have shape \[B, T, H, d_h\] \(4 dims\), got \[9, 3, 4\]"),
    "k shape": (lambda x: {"k": x["k"][:, :5]}, r"q, k, v must share one shape"),
    "v dtype": (lambda x: {"v": x["v"].long()}, r"v must be a floating-point tensor"),
    "gate shape": (lambda x: {"lr": x["lr"][..., None]}, r"lr must have shape \[B, T, H\] = \[2, 9, 3\], got \[2, 9, 3, 1\]"),
    "gate length": (lambda x: {"forget": x["forget"][:, :4]}, r"forget must have shape \[B, T, H\]"),
    "weights empty": (lambda x: {"weights": ()}, r"weights must be a non-empty tuple"),
    "weights not tuple": (lambda x: {"weights": x["weights"][0]}, r"weights must be a non-empty tuple"),
    "weight rank": (lambda x: {"weights": (x["weights"][0][0], x["weights"][1])}, r"weights\[0\] must have shape \[H, d_in, d_out\] or \[B, H, d_in, d_out\]"),
    "weight heads": (lambda x: {"weights": (x["weights"][0][:2], x["weights"][1])}, r"weights\[0\] must have shape \[3, 4, 'd_out'\]"),
    "weight chain": (lambda x: {"weights": (x["weights"][0], x["weights"][1][:, :5])}, r"weights\[1\] must have shape \[3, 8, 'd_out'\]"),
    "weight out dim": (lambda x: {"weights": (x["weights"][0], x["weights"][1][..., :3])}, r"must map to d_h = 4, got d_out = 3"),
    "carried batch": (lambda x: {"weights": (x["weights"][0].expand(5, -1, -1, -1), x["weights"][1])}, r"weights\[0\] must have shape \[2, 3, 4, 'd_out'\]"),
    "momenta count": (lambda x: {"momenta": (torch.zeros(2, 3, 4, 8, dtype=torch.float64),)}, r"momenta must be None or a tuple of 2 tensors"),
    "momenta shape": (lambda x: {"momenta": tuple(w.clone() for w in x["weights"])}, r"momenta\[0\] must have shape \[2, 3, 4, 8\]"),
    "chunk zero": (lambda x: {"chunk_size": 0}, r"chunk_size must be an int >= 1, got 0"),
    "chunk float": (lambda x: {"chunk_size": 2.5}, r"chunk_size must be an int >= 1, got 2.5"),
    "chunk bool": (lambda x: {"chunk_size": True}, r"chunk_size must be an int >= 1, got True"),
    "backend": (lambda x: {"backend": "cuda"}, r"backend must be one of \['auto', 'sequential', 'torch', 'triton'\], got 'cuda'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_argument(case):
    change, message = CASES[case]
    with pytest.raises(ValueError, match=message):
        _call(**change(_inputs()))


def test_triton_unavailable_is_clear(monkeypatch):
    from titans_kernels.memory_op import BACKENDS

    monkeypatch.delitem(BACKENDS, "triton", raising=False)  # as in an installation without triton
    with pytest.raises(ValueError, match=r"backend 'triton' is not available in this installation; available: \['sequential', 'torch'\]"):
        _call(backend="triton")
