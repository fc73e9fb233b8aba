"""Megatron-core DDP + optimizer (plain and distributed) on CPU over gloo equal one process with torch
AdamW, and their AdamW state survives param_moments / load_param_moments."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import ROOT

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

OPTIM = dict(lr=1e-3, min_lr=1e-4, weight_decay=5.0)  # large: the decay rule shows in the losses


def tiny_config(tensor=1):
    from titans_megatron import TitansConfig

    return TitansConfig.from_preset("tiny", variant="mag", seq_length=32, vocab_size=300, window_size=16,
                                    num_persistent_tokens=2, hidden_size=64, ffn_hidden_size=128,
                                    num_attention_heads=2, memory_chunk_size=8, tensor_model_parallel_size=tensor)


def batch(step):
    return torch.randint(0, 300, (4, 33), generator=torch.Generator().manual_seed(100 + step))


def loss_of(model, tokens):
    return F.cross_entropy(model(tokens[:, :-1]).float().flatten(0, 1), tokens[:, 1:].flatten())


def reference_losses():
    """One process, torch AdamW, the torch path's parameter groups (no decay on optim.no_decay names)."""
    from titans_pretrain.config import OptimSection
    from titans_pretrain.param_groups import parameter_groups
    from titans_megatron import build_model

    optim = OptimSection(**OPTIM)
    model = build_model(tiny_config(), seed=3)
    adam = torch.optim.AdamW(parameter_groups(model, optim), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    losses = []
    for step in range(4):
        adam.zero_grad()
        loss = loss_of(model, batch(step))
        loss.backward()
        adam.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def reference():
    return reference_losses()


@pytest.mark.parametrize("tensor, distributed", [(1, True), (2, True), (1, False)])
def test_megatron_ddp_and_optimizer_match_one_process(reference, tmp_path, tensor, distributed):
    out = tmp_path / "losses.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "pretrain" / "megatron_worker.py"), str(out), str(tensor), "1" if distributed else "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads(out.read_text())
    assert losses == pytest.approx(reference, rel=1e-5, abs=1e-5)


def test_grad_clip_zero_turns_clipping_off():
    """optim.grad_clip 0 means no clipping on the torch path, as on Megatron's (which skips it at 0)."""
    from titans_pretrain.distributed import clip_gradients

    model = torch.nn.Linear(3, 3)
    model.weight.grad, model.bias.grad = torch.full((3, 3), 2.0), torch.full((3,), 2.0)
    clip_gradients(model, 0.0, 10.0)
    assert (model.weight.grad == 2.0).all()
    clip_gradients(model, 1.0, 10.0)
    torch.testing.assert_close(model.weight.grad, torch.full((3, 3), 0.2), rtol=1e-5, atol=0)


def test_default_decay_rule():
    """No decay on norms, biases, the memory's gates and initial weights; every projection decays,
    LMM's hidden x hidden output gate included."""
    from titans_pretrain.config import OptimSection
    from titans_pretrain.param_groups import parameter_groups
    from titans_megatron import TitansConfig, build_model

    config = TitansConfig.from_preset("tiny", variant="lmm", seq_length=32, vocab_size=300, hidden_size=64,
                                      ffn_hidden_size=128, num_attention_heads=2, memory_chunk_size=8)
    model = build_model(config)
    names = {id(p): n.split("layers.0.")[-1] for n, p in model.named_parameters()}
    decay, exempt = ({names[id(p)] for p in g["params"]} for g in parameter_groups(model, OptimSection()))
    assert {"self_attention.linear_gate.weight", "self_attention.memory.linear_qkv.weight"} <= decay
    assert {"self_attention.memory.linear_gates.weight", "self_attention.memory.gate_bias",
            "self_attention.memory.memory_init_0", "input_layernorm.weight"} <= exempt
