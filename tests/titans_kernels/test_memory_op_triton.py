"""``backend="triton"`` against the ``torch`` backend and the oracle at many random shapes.

On a CPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, set by
tests/conftest.py before triton is first imported), at small sizes; on a CUDA machine the same tests run compiled on the GPU, and the
``gpu``-marked tests add real sizes. The reference is the ``torch`` backend in float64 (itself equal
to the token-loop oracle, tests/titans_kernels/test_memory_op_equivalence.py).
"""

import os
import warnings

import pytest
import torch

triton = pytest.importorskip("triton", reason="the triton package is not installed")
pytestmark = pytest.mark.slow  # the Triton interpreter on CPU: not in make test-fast
assert torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets it"

from titans_kernels import neural_memory  # noqa: E402
from titans_kernels.memory_op import resolve_backend  # noqa: E402
from tests.titans_kernels.memory_inputs import make_inputs, run_with_loss  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ["q", "k", "v", "lr", "momentum", "forget", "weights/momenta 0", "weights/momenta 1",
         "weights/momenta 2", "weights/momenta 3"]
# fp32 kernels against float64: max |error| / max |reference| per tensor.
RTOL_FP32 = 2e-5
# heads x tokens / 16 x layers x expansion x (d / 16)^2 of a random case: at most ~4 s of the interpreter here
INTERPRETER_BUDGET = 128


def _cast(inputs, dtype, device=DEVICE, requires_grad=True):
    out = {}
    for name, x in inputs.items():
        if x is None:
            out[name] = None
        elif isinstance(x, tuple):
            out[name] = tuple(t.detach().to(device, dtype).requires_grad_(requires_grad) for t in x)
        else:
            out[name] = x.detach().to(device, dtype).requires_grad_(requires_grad)
    return out


def _rel(a, ref):
    scale = ref.abs().max().clamp_min(1e-30)
    return ((a.double().cpu() - ref.double().cpu()).abs().max() / scale).item()


def _random_case(seed):
    """(B, T, H, d, depth, expansion, chunk, carried): T not a multiple of the chunk, several
    checkpoint groups likely, hidden widths that are and are not powers of two."""
    g = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    while True:  # within the interpreter's budget: the gpu-marked tests take real sizes
        chunk = pick([16, 16, 32])
        T = pick([0, 1, 2, 4]) * chunk + pick([1, 5, 11, chunk - 1])
        case = (pick([1, 2, 3]), T, pick([1, 2, 3]), pick([16, 32]), pick([1, 2]), pick([1, 2, 3]), chunk,
                pick([False, True]))
        B, _, H, d, depth, expansion = case[:6]
        if B * H * -(-T // chunk) * (chunk // 16) * depth * expansion * (d // 16) ** 2 <= INTERPRETER_BUDGET:
            return case


def _compare_with_torch(B, T, H, d, depth, expansion, chunk, carried, seed, rtol=RTOL_FP32):
    exact = make_inputs(B, T, H, d, depth, expansion=expansion, carried=carried, seed=seed, requires_grad=True)
    o_ref, s_ref, g_ref = run_with_loss(exact, "torch", chunk)
    o, s, g = run_with_loss(_cast(exact, torch.float32), "triton", chunk)
    assert o.dtype == torch.float32 and o.device.type == DEVICE
    assert _rel(o, o_ref) < rtol, "output"
    for i, (a, b) in enumerate(zip(s, s_ref)):
        assert a.dtype == torch.float32
        assert _rel(a, b) < rtol, f"final state {i}"
    for name, a, b in zip(NAMES, g, g_ref):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert _rel(a, b) < rtol, f"gradient of {name}"


@pytest.mark.parametrize("seed", range(16))
def test_triton_equals_torch_random_shapes(seed):
    _compare_with_torch(*_random_case(seed), seed=seed)


@pytest.mark.parametrize("depth", [1, 2])
def test_triton_equals_oracle(depth):
    exact = make_inputs(2, 37, 2, 16, depth, expansion=2, carried=True, seed=5, requires_grad=True)
    o_ref, s_ref, g_ref = run_with_loss(exact, "sequential", 16)
    o, s, g = run_with_loss(_cast(exact, torch.float32), "triton", 16)
    assert _rel(o, o_ref) < RTOL_FP32
    assert max(_rel(a, b) for a, b in zip(s, s_ref)) < RTOL_FP32
    assert max(_rel(a, b) for a, b in zip(g, g_ref)) < RTOL_FP32


def test_many_heads_and_edge_lengths():
    """Larger B x H (programs) and the shortest sequences: one token, one partial chunk, one chunk."""
    _compare_with_torch(3, 17, 4, 16, 2, 1, 16, True, seed=40)
    for T in (1, 7, 16):
        _compare_with_torch(1, T, 2, 16, 2, 2, 16, False, seed=41 + T)


def test_chunk_64_and_head_dim_64():
    _compare_with_torch(1, 70, 1, 64, 2, 1, 64, True, seed=50)


def test_inference_forward_equals_training_forward():
    """Without gradients no checkpoints are stored; output and state are the same."""
    exact = make_inputs(2, 50, 2, 16, 2, expansion=2, carried=True, seed=6)
    inputs = _cast(exact, torch.float32, requires_grad=False)
    with torch.no_grad():
        out, (W, S) = neural_memory(**inputs, chunk_size=16, backend="triton")
    out_g, (W_g, S_g) = neural_memory(**_cast(exact, torch.float32), chunk_size=16, backend="triton")
    torch.testing.assert_close(out, out_g.detach(), rtol=0, atol=0)
    for a, b in zip(W + S, W_g + S_g):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def test_split_calls_equal_one_call():
    """Carried states in and out: two calls split at a chunk boundary equal one call."""
    inputs = _cast(make_inputs(2, 61, 2, 16, 2, expansion=2, seed=8), torch.float32, requires_grad=False)
    whole, (W, S) = neural_memory(**inputs, chunk_size=16, backend="triton")
    cut = 32
    first = {k: (x[:, :cut] if k in ("q", "k", "v", "lr", "momentum", "forget") else x) for k, x in inputs.items()}
    second = {k: (x[:, cut:] if k in ("q", "k", "v", "lr", "momentum", "forget") else x) for k, x in inputs.items()}
    out1, (W1, S1) = neural_memory(**first, chunk_size=16, backend="triton")
    second.update(weights=W1, momenta=S1)
    out2, (W2, S2) = neural_memory(**second, chunk_size=16, backend="triton")
    torch.testing.assert_close(torch.cat([out1, out2], 1), whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(W2 + S2, W + S):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# Half inputs take tensor-core dots in their own type, with fp32 state and accumulators: max |error| /
# max |reference| against float64 on the same rounded inputs (docs/memory_op.md states these; measured
# at seeds 0-3: bf16 output 0.014, state 0.029, gradients 0.020; fp16 6e-4, 1.4e-3, 9e-4).
HALF_TOLERANCES = {
    torch.bfloat16: {"output": 3e-2, "state": 5e-2, "gradients": 4e-2},
    torch.float16: {"output": 2e-3, "state": 4e-3, "gradients": 3e-3},
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_inputs_within_tolerance(dtype, seed):
    exact = make_inputs(2, 40, 2, 32, 2, expansion=2, seed=9 + seed, requires_grad=True)
    rounded = _cast(exact, dtype, device="cpu", requires_grad=False)
    o_ref, s_ref, g_ref = run_with_loss(_cast(rounded, torch.float64, device="cpu"), "torch", 16)
    o, s, g = run_with_loss(_cast(rounded, dtype), "triton", 16)
    assert o.dtype == dtype and all(t.dtype == torch.float32 for t in s)
    assert all(t.dtype == dtype for t in g[:6])
    tol = HALF_TOLERANCES[dtype]
    assert _rel(o, o_ref) < tol["output"]
    assert max(_rel(a, b) for a, b in zip(s, s_ref)) < tol["state"]
    assert max(_rel(a, b) for a, b in zip(g, g_ref)) < tol["gradients"]


@pytest.mark.parametrize("case", ["depth3", "chunk8", "fp64", "head_dim8"])
def test_uncovered_arguments_fall_back_to_torch_with_a_warning(case):
    depth, chunk, dtype, d = {"depth3": (3, 16, torch.float32, 16), "chunk8": (2, 8, torch.float32, 16),
                              "fp64": (2, 16, torch.float64, 16), "head_dim8": (2, 16, torch.float32, 8)}[case]
    inputs = _cast(make_inputs(1, 20, 2, d, depth, seed=3), dtype, requires_grad=False)
    with pytest.warns(UserWarning, match="running the 'torch' backend"):
        out, _ = neural_memory(**inputs, chunk_size=chunk, backend="triton")
    ref, _ = neural_memory(**inputs, chunk_size=chunk, backend="torch")
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_auto_picks_triton_on_cuda_only():
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


def test_covered_arguments_do_not_warn():
    inputs = _cast(make_inputs(1, 20, 2, 16, 2, seed=3), torch.float32, requires_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neural_memory(**inputs, chunk_size=16, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("depth,T,d", [(2, 2048, 64), (2, 1000, 128), (1, 4096, 64), (2, 8192, 32)])
def test_real_sizes_on_gpu(depth, T, d, dtype):
    """Real sizes, compiled, against the torch backend in float64 on the same rounded inputs."""
    torch.backends.cuda.matmul.allow_tf32 = False
    exact = make_inputs(2, T, 4, d, depth, expansion=4, carried=True, seed=11, requires_grad=True)
    rounded = _cast(exact, dtype, device="cpu", requires_grad=False)
    o_ref, s_ref, g_ref = run_with_loss(_cast(rounded, torch.float64, device="cuda"), "torch", 16)
    o, s, g = run_with_loss(_cast(rounded, dtype, device="cuda"), "triton", 16)
    tol = {"output": 1e-3, "state": 1e-3, "gradients": 1e-3} if dtype == torch.float32 else HALF_TOLERANCES[dtype]
    assert _rel(o, o_ref) < tol["output"]
    assert max(_rel(a, b) for a, b in zip(s, s_ref)) < tol["state"]
    assert max(_rel(a, b) for a, b in zip(g, g_ref)) < tol["gradients"]


@pytest.mark.parametrize("depth", [1, 2])
def test_autocast_region_leaves_the_kernels_in_their_precision(depth):
    """A bf16 autocast region (every bf16 training step) changes nothing: the gate coefficients the
    kernels read stay fp32, and the backward's recomputation of them sees the same values."""
    results = {}
    for autocast in (False, True):
        inputs = _cast(make_inputs(2, 37, 2, 16, depth, carried=True, seed=21, requires_grad=True), torch.bfloat16)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            results[autocast] = run_with_loss(inputs, "triton", 16)
    for a, b in zip(results[False][1] + results[False][2], results[True][1] + results[True][2]):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=0, atol=0)
