"""Tensor parallel 2 (two gloo processes) gives the logits and gradients of tensor parallel 1."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.titans_megatron.model_configs import VARIANTS
from tests.titans_megatron.tp_reference import assembled, assembled_grads, assert_equal_fp32, forward_backward

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path, world, sequence_parallel=False, attempts=2):
    """Run ``world`` worker processes; a free port can be taken between choosing and binding it, so
    a rendezvous failure is retried once on another port."""
    out = tmp_path / "tp.pt"
    env = {**os.environ, "PYTHONPATH": ROOT}
    for attempt in range(attempts):
        port = _port()
        procs = [subprocess.Popen([sys.executable, "-m", "tests.titans_megatron.tp_worker", str(r), str(world),
                                   str(port), str(out), "1" if sequence_parallel else "0", ",".join(VARIANTS)],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r in range(world)]
        errors = [p.communicate(timeout=600)[1] for p in procs]
        if all(p.returncode == 0 for p in procs):
            return torch.load(out)
        if attempt == attempts - 1 or not any("address" in e.lower() or "connect" in e.lower() for e in errors):
            raise AssertionError("\n".join(e[-3000:] for e in errors))


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    return run_ranks(tmp_path_factory.mktemp("tp2"), 2)


@pytest.fixture(scope="module")
def tp2_sp(tmp_path_factory):
    return run_ranks(tmp_path_factory.mktemp("tp2sp"), 2, sequence_parallel=True)


@pytest.fixture(scope="module")
def tp1():
    return {variant: forward_backward(variant) for variant in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_tp2_equals_tp1(tp1, tp2, variant):
    compare(tp1[variant], tp2[variant], variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sequence_parallel_equals_tp1(tp1, tp2_sp, variant):
    """Sequence parallelism on (tensor parallel 2, gloo) against off: same logits and gradients."""
    compare(tp1[variant], tp2_sp[variant], f"{variant} (sequence parallel)")


def compare(reference, other, variant):
    model, logits = reference
    assert_equal_fp32(other["logits"], logits.detach(), f"{variant} logits")
    expected, grads = assembled_grads(model), other["grads"]
    # every parameter is in the checkpoint, so every gradient is compared
    assert sum(t.numel() for t in expected.values()) == sum(p.numel() for p in model.parameters())
    assert sorted(grads) == sorted(expected)
    for name, g in expected.items():
        assert_equal_fp32(grads[name], g, f"{variant} {name}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_sharded_state_dict_is_the_same_at_tp2_and_tp1(tp1, tp2, variant):
    """The checkpoint tensors (ShardedTensors placed at their global offsets) of the tensor-parallel-2
    model equal those of the tensor-parallel-1 model: a checkpoint reshards between the two."""
    model, _ = tp1[variant]
    reference = assembled(model.gpt.sharded_state_dict())
    full = tp2[variant]["checkpoint"]
    assert sorted(full) == sorted(reference)
    for key, tensor in reference.items():
        assert not torch.isnan(full[key]).any(), f"{variant} {key}: the shards leave holes"
        assert torch.equal(full[key], tensor), f"{variant} {key}: the shards do not rebuild the weight"
    ours = ("memory_init_0", "conv_weight", "gate_bias", "persistent", "norm")
    expected = {"transformer++": ["norm"], "gdn": ["in_proj.weight.alpha", "conv1d.weight.value", "A_log", "out_norm"]}.get(
        variant, ours)
    assert all(any(k in key for key in reference) for k in expected), sorted(reference)
