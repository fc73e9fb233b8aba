"""The model on the Triton memory kernels (interpreter on CPU) equals the model on the torch backend."""

import pytest
import torch

from titans_megatron import build_model
from tests.titans_megatron.model_configs import small_config

pytest.importorskip("triton", reason="the triton package is not installed")
pytestmark = pytest.mark.slow  # the Triton interpreter on CPU: not in make test-fast


@pytest.mark.filterwarnings("error:neural_memory backend 'triton' does not cover")  # no silent fallback
@pytest.mark.parametrize("variant", ["lmm", "mac"])
def test_triton_memory_backend_matches_torch(variant):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = 2 if device == "cuda" else 1  # the interpreter's time is per sequence
    ids = torch.randint(0, 97, (batch, 64), generator=torch.Generator().manual_seed(0)).to(device)
    results = {}
    for backend in ("torch", "triton"):
        # chunk 16: the kernels' smallest; deep memory with hidden width 4 x 32.
        model = build_model(small_config(variant, memory_chunk_size=16, memory_backend=backend), seed=3).to(device)
        logits = model(ids)
        logits.float().square().mean().backward()
        results[backend] = (logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (ref, ref_grads), (out, grads) = results["torch"], results["triton"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-3, atol=1e-6, msg=lambda m: f"{name}: {m}")
