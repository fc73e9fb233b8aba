"""Every variant trains under a bf16 autocast region (run.precision bf16, the GPU default): logits and
gradients stay within bf16 rounding of the fp32 model, on both memory backends."""

import importlib.util

import pytest
import torch

from titans_megatron import build_model
from tests.titans_megatron.model_configs import VARIANTS, small_config

# Norm-wise relative error, ||bf16 - fp32|| / ||fp32||: bf16 keeps 8 bits of mantissa (~4e-3 per op).
# All gradients together within TOLERANCE; each parameter's within PER_PARAMETER, looser because the
# gate biases' gradients are sums over every token with cancellation (up to 9% measured on CPU).
TOLERANCE = 2e-2
# Gated DeltaNet: the delta rule's write v - S^T k cancels, doubling the relative rounding error of its
# inputs (0.44% -> 0.88% measured at the first layer), so its logits and gradients sit at twice the
# others' error (1.9% / 3.1% measured; the other variants 0.8-1.2% / 1.1-1.7%).
GDN_TOLERANCE = 4e-2
PER_PARAMETER = 0.15
# Gated DeltaNet's decay gates (A_log, dt_bias): one number per head, each a sum over every token of
# the layer; 15.4% measured on the second layer of the two-head test model (the first: 2.2%).
PER_HEAD_DECAY = 0.25
CASES = [(variant, "torch") for variant in VARIANTS] + [
    # The kernels under the interpreter take ~10 s a variant on CPU: MAC (prefix + segments) stands for all;
    # tests/titans_kernels/test_memory_op_triton.py checks the op itself under autocast.
    pytest.param("mac", "triton", marks=[pytest.mark.slow, pytest.mark.skipif(
        importlib.util.find_spec("triton") is None, reason="the triton package is not installed")])]


def _relative(a, ref):
    return ((a.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def _step(variant, backend, bf16):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = 1 if backend == "triton" and device == "cpu" else 2  # the interpreter's time is per sequence
    ids = torch.randint(0, 97, (batch, 64), generator=torch.Generator().manual_seed(0)).to(device)
    model = build_model(small_config(variant, memory_chunk_size=16, memory_backend=backend), seed=3).to(device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.roll(-1, 1).flatten())
        # Megatron-core's linears replay the forward's autocast state in their backward (custom_bwd) on
        # CUDA only; on CPU the backward runs inside the region to do the same.
        if device == "cpu":
            loss.backward()
    if device != "cpu":
        loss.backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("error:neural_memory backend 'triton' does not cover")
@pytest.mark.parametrize("variant,backend", CASES)
def test_bf16_autocast_step_within_rounding_of_fp32(variant, backend):
    ref_logits, ref_grads = _step(variant, backend, bf16=False)
    logits, grads = _step(variant, backend, bf16=True)
    tolerance = GDN_TOLERANCE if variant == "gdn" else TOLERANCE
    assert logits.dtype == torch.bfloat16
    assert _relative(logits, ref_logits) < tolerance
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert g.dtype == torch.float32, name  # weights and their gradients stay fp32
        assert torch.isfinite(g).all(), name
        decay = name.endswith(("A_log", "dt_bias"))
        assert _relative(g, ref_grads[name]) < (PER_HEAD_DECAY if decay else PER_PARAMETER), name
    flat = torch.cat([g.flatten() for g in grads.values()])
    assert _relative(flat, torch.cat([ref_grads[n].flatten() for n in grads])) < tolerance
