"""The chunked dual form (``torch``) equals the token-loop oracle (``sequential``) in float64."""

import pytest
import torch

from titans_kernels import neural_memory
from tests.titans_kernels.memory_inputs import leaves, make_inputs, random_shape, run_with_loss


def neural_memory_op(inputs, chunk_size=4):
    return neural_memory(**inputs, chunk_size=chunk_size, backend="torch")

ATOL = 1e-10


def _compare(a, b, what):
    assert a.shape == b.shape, what
    assert torch.isfinite(a).all(), f"{what}: oracle not finite (inputs diverged)"
    torch.testing.assert_close(b, a, rtol=1e-9, atol=ATOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("carried", [False, True], ids=["init", "carried"])
@pytest.mark.parametrize("chunk_size", [1, 2, 16])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_torch_equals_sequential(depth, chunk_size, carried):
    seed = 100 * depth + 10 * chunk_size + carried
    B, T, H, d = random_shape(seed, chunk_size)
    results = {}
    for backend in ("sequential", "torch"):
        inputs = make_inputs(B, T, H, d, depth, expansion=2, carried=carried, seed=seed, requires_grad=True)
        results[backend] = run_with_loss(inputs, backend, chunk_size)
    (o_ref, s_ref, g_ref), (o, s, g) = results["sequential"], results["torch"]
    _compare(o_ref, o, "output")
    for i, (a, b) in enumerate(zip(s_ref, s)):
        _compare(a, b, f"final state {i}")
    names = ["q", "k", "v", "lr", "momentum", "forget"] + [f"weights/momenta {i}" for i in range(2 * depth)]
    for name, a, b in zip(names, g_ref, g):
        _compare(a, b, f"gradient of {name}")


@pytest.mark.parametrize("gate", ["momentum_zero", "forget_one", "lr_zero", "momentum_one"])
def test_extreme_gates_exact(gate):
    """eta = 0, alpha = 1, theta = 0 and eta = 1 go through the coefficient matrices exactly."""
    results = {}
    for backend in ("sequential", "torch"):
        inputs = make_inputs(2, 21, 2, 4, 2, carried=True, seed=7)
        name, value = {"momentum_zero": ("momentum", 0.0), "forget_one": ("forget", 1.0),
                       "lr_zero": ("lr", 0.0), "momentum_one": ("momentum", 1.0)}[gate]
        g = inputs[name].clone()
        g[:, 3:11] = value  # a span crossing a chunk boundary
        inputs[name] = g
        for x in leaves(inputs):
            x.requires_grad_()
        results[backend] = run_with_loss(inputs, backend, chunk_size=8)
    for a, b in zip(results["sequential"][2], results["torch"][2]):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=1e-9, atol=ATOL)
    torch.testing.assert_close(results["torch"][0], results["sequential"][0], rtol=1e-9, atol=ATOL)


def test_shared_init_equals_carried_copy():
    """Weights [H, ...] shared by the batch act like the same weights copied per sample; the shared
    gradient is the sum of the per-sample ones."""
    shared = make_inputs(3, 19, 2, 4, 2, seed=3, requires_grad=True)
    copied = make_inputs(3, 19, 2, 4, 2, seed=3)
    copied["weights"] = tuple(w.detach().expand(3, *w.shape).clone().requires_grad_() for w in shared["weights"])
    o1, s1, g1 = run_with_loss(shared, "torch", 4)
    o2, s2, g2 = run_with_loss(copied, "torch", 4)
    torch.testing.assert_close(o1, o2)
    for w_shared, w_copied in zip(shared["weights"], copied["weights"]):
        torch.testing.assert_close(w_shared.grad, w_copied.grad.sum(0))


def test_auto_is_torch_on_cpu():
    from titans_kernels.memory_op import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    inputs = make_inputs(1, 9, 1, 4, 2, seed=0)
    a, _ = neural_memory(**inputs, chunk_size=4, backend="auto")
    b, _ = neural_memory(**inputs, chunk_size=4, backend="torch")
    assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_backend_on_cuda_matches_cpu(dtype):
    cpu = make_inputs(2, 77, 4, 32, 2, expansion=4, seed=4, requires_grad=True)
    gpu = {k: (tuple(t.detach().cuda().to(dtype).requires_grad_() for t in x) if isinstance(x, tuple)
               else None if x is None else x.detach().cuda().to(dtype).requires_grad_()) for k, x in cpu.items()}
    o_ref, s_ref, g_ref = run_with_loss(cpu, "torch", 16)
    o, s, g = run_with_loss(gpu, "torch", 16)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    rel = lambda a, b: ((a.double().cpu() - b).abs().max() / b.abs().max()).item()  # noqa: E731
    assert rel(o, o_ref) < tol
    assert max(rel(a, b) for a, b in zip(s, s_ref)) < tol
    assert max(rel(a, b) for a, b in zip(g, g_ref)) < 5 * tol


def test_second_backward_with_retained_graph():
    """The forward hands its last group's activations to the first backward; a second backward
    (retain_graph) recomputes them and gives the same gradients."""
    inputs = make_inputs(2, 70, 2, 4, 2, seed=8, requires_grad=True)
    out, _ = neural_memory_op(inputs)
    out.sum().backward(retain_graph=True)
    first = [x.grad.clone() for x in leaves(inputs)]
    out.sum().backward()
    for x, g in zip(leaves(inputs), first):
        torch.testing.assert_close(x.grad, 2 * g)


@pytest.mark.parametrize("depth", [1, 2])
def test_autocast_region_leaves_the_op_in_its_compute_dtype(depth):
    """Inside a bf16 autocast region (training on GPU, any bf16 run) the op computes as outside it:
    its matmuls would otherwise return bf16 and meet the fp32 state in place."""
    results = {}
    for autocast in (False, True):
        inputs = make_inputs(2, 19, 2, 8, depth, dtype=torch.float32, carried=True, seed=5, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            results[autocast] = run_with_loss(inputs, "torch", chunk_size=4)
    for a, b in zip(results[False][2], results[True][2]):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=0, atol=0)
