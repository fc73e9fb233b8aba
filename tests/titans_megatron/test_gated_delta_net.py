"""Gated DeltaNet (variant gdn): our subclass of Megatron-core's module against a token-by-token oracle
of the gated delta rule and against upstream's own forward, its initialisation and its FLOP term."""

import math

import sys

import pytest
import torch
import torch.nn.functional as F
from megatron.core.ssm import gated_delta_net as upstream
from torch.utils.flop_counter import FlopCounterMode

from tests.titans_megatron.model_configs import small_config
from titans_megatron import build_model
from titans_megatron.flops import training_flops_per_token
from titans_megatron.gated_delta_net import torch_l2norm


def delta_rule_oracle(q, k, v, g, beta, state=None):
    """Token by token: S <- exp(g) S; S <- S + beta k (v - S^T k)^T; o = S^T q / sqrt(d_k).
    q, k [b, T, H, d_k], v [b, T, H, d_v], g (log decay) and beta [b, T, H]; S [b, H, d_k, d_v]."""
    b, T, H, dk = k.shape
    S = torch.zeros(b, H, dk, v.shape[-1], dtype=torch.float64) if state is None else state.double()
    outs = []
    for t in range(T):
        qt, kt, vt = (x[:, t].double() for x in (q, k, v))
        S = S * g[:, t].double().exp()[..., None, None]
        recalled = (kt.unsqueeze(-2) @ S).squeeze(-2)
        S = S + kt.unsqueeze(-1) @ (beta[:, t].double()[..., None] * (vt - recalled)).unsqueeze(-2)
        outs.append((qt.unsqueeze(-2) / math.sqrt(dk) @ S).squeeze(-2))
    return torch.stack(outs, dim=1), S


def random_inputs(b, T, H, dk, dv, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k = (F.normalize(torch.randn(b, T, H, dk, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(b, T, H, dv, generator=gen)
    g = -torch.rand(b, T, H, generator=gen) * 0.5
    beta = torch.rand(b, T, H, generator=gen)
    return q, k, v, g, beta


@pytest.mark.parametrize("seed", range(6))
def test_torch_chunked_rule_with_carried_state_equals_the_token_loop(seed):
    """The CPU path (Megatron's torch chunked rule) at random shapes, split into two calls at a random
    point with the state carried, as a stream does."""
    gen = torch.Generator().manual_seed(100 + seed)
    b, H = (int(x) for x in torch.randint(1, 3, (2,), generator=gen))
    dk, dv = (int(x) for x in torch.randint(2, 17, (2,), generator=gen))
    T = int(torch.randint(2, 150, (1,), generator=gen))
    cut = int(torch.randint(1, T, (1,), generator=gen))
    q, k, v, g, beta = random_inputs(b, T, H, dk, dv, seed)
    expected, final = delta_rule_oracle(q, k, v, g, beta)
    first, state = upstream.torch_chunk_gated_delta_rule(*(x[:, :cut] for x in (q, k, v)), g=g[:, :cut], beta=beta[:, :cut],
                                                         output_final_state=True)
    second, state = upstream.torch_chunk_gated_delta_rule(*(x[:, cut:] for x in (q, k, v)), g=g[:, cut:], beta=beta[:, cut:],
                                                          initial_state=state, output_final_state=True)
    torch.testing.assert_close(torch.cat([first, second], dim=1).double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.double(), final, rtol=1e-4, atol=1e-5)


def test_l2norm_is_flas():
    x = torch.randn(3, 5, 2, 16, dtype=torch.float64)
    torch.testing.assert_close(torch_l2norm(x), x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6))


def _mixer(**fields):
    model = build_model(small_config("gdn", **fields))
    return model, model.gpt.decoder.layers[0].self_attention


def test_forward_is_upstreams_forward():
    """Same gates, conv, norms and head layout: our forward equals Megatron's own GatedDeltaNet.forward
    on the same module (its torch path: deterministic mode, fla's l2norm replaced, its compiled gated
    norm, and on megatron-core 0.19 its other torch.compile'd steps, run plainly)."""
    _, mixer = _mixer()
    x = torch.randn(40, 2, mixer.hidden_size, generator=torch.Generator().manual_seed(0))
    ours, _ = mixer(x)
    mixer.config.deterministic_mode = True
    # torch's own patch for its config (a monkeypatch's undo left dynamo's `disable` unknown to a later test)
    with pytest.MonkeyPatch.context() as mp, torch._dynamo.config.patch(disable=True):
        mp.setattr(upstream, "l2norm", torch_l2norm, raising=False)
        common = sys.modules.get(upstream.__name__ + ".common")  # megatron-core 0.19's home of the forward
        if common is not None:
            mp.setattr(common, "l2norm", torch_l2norm, raising=False)
            mp.setattr(mixer, "gated_delta_rule", upstream.torch_chunk_gated_delta_rule)  # picked at init there
        mp.setattr(upstream.GatedDeltaNet, "_apply_gated_norm", upstream.GatedDeltaNet._apply_gated_norm.__wrapped__)
        theirs, _ = upstream.GatedDeltaNet.forward(mixer, x, attention_mask=None)
    mixer.config.deterministic_mode = False
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_gates_start_where_the_config_puts_them():
    lo_hi, A_range = (1e-3, 1e-1), (0.0, 16.0)
    _, mixer = _mixer(linear_num_key_heads=64, linear_num_value_heads=64, linear_key_head_dim=4, linear_value_head_dim=4)
    dt = F.softplus(mixer.dt_bias.detach())
    assert lo_hi[0] * (1 - 1e-5) <= float(dt.min()) and float(dt.max()) <= lo_hi[1] * (1 + 1e-5)
    A = mixer.A_log.detach().exp()
    assert A_range[0] <= float(A.min()) and float(A.max()) <= A_range[1] and float(A.std()) > 1.0
    _, megatrons = _mixer(gdn_dt_init=None, gdn_A_init=(1.0, 16.0))
    assert torch.equal(megatrons.dt_bias, torch.ones_like(megatrons.dt_bias))
    assert float(megatrons.A_log.exp().min()) >= 1.0


def test_recurrence_costs_six_dk_dv_per_token_and_head():
    """flops.py's Gated DeltaNet term is the recurrent form's work (read, write, readout)."""
    b, T, H, dk, dv = 1, 3, 2, 8, 12
    q, k, v, g, beta = random_inputs(b, T, H, dk, dv, 0)
    with FlopCounterMode(display=False) as counter:
        delta_rule_oracle(q, k, v, g, beta)
    # the counter prices einsums as matmuls (2 per multiply-add); the decay and the beta scaling are
    # elementwise and outside the model
    per_token_and_head = counter.get_total_flops() / (b * T * H)
    assert per_token_and_head == 6 * dk * dv
    config = small_config("gdn", linear_key_head_dim=dk, linear_value_head_dim=dv, linear_num_key_heads=H,
                          linear_num_value_heads=H)
    assert training_flops_per_token(config, 1000.0) == 6 * 1000.0 + config.num_layers * 3 * per_token_and_head * H


@pytest.mark.parametrize("field, value, message", [
    ("linear_num_value_heads", 3, "multiple of linear_num_key_heads"),
    ("gdn_dt_init", (0.1, 0.01), "gdn_dt_init"),
    ("gdn_A_init", (-1.0, 2.0), "gdn_A_init"),
    ("linear_key_head_dim", 0, "linear_key_head_dim"),
])
def test_bad_widths_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        small_config("gdn", **{field: value})


def test_cpu_path_needs_no_fla_and_a_gpu_does(monkeypatch):
    """Upstream refuses to build without fla; on CPU nothing of fla is called, so the model builds and
    runs without it, while on a GPU the missing kernels are named."""
    monkeypatch.setattr(upstream, "HAVE_FLA", False)
    model, _ = _mixer()
    assert torch.isfinite(model(torch.randint(0, 97, (1, 8)))).all()
    assert upstream.HAVE_FLA is False  # the check is lifted for the construction only
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ImportError, match="fla-core"):
        _mixer()


@pytest.mark.gpu
def test_fla_kernels_on_cuda_match_the_torch_path():
    """On CUDA the delta rule and the L2 norm are fla's kernels: logits and every gradient of the same model
    against Megatron's torch path (deterministic mode), and the stream (fla's initial and final state)
    against one forward; 2e-3 covers the kernels' other summation order."""
    model = build_model(small_config("gdn", seq_length=256), seed=0).cuda()
    ids = torch.randint(0, 97, (2, 256), generator=torch.Generator().manual_seed(0)).cuda()
    results = {}
    for deterministic in (False, True):
        model.config.deterministic_mode = deterministic
        model.zero_grad()
        logits = model(ids)
        logits.float().square().mean().backward()
        results[deterministic] = [logits.detach()] + [p.grad.clone() for p in model.parameters()]
    model.config.deterministic_mode = False
    for fla, torch_path in zip(results[False], results[True]):
        torch.testing.assert_close(fla, torch_path, rtol=2e-3, atol=2e-3)
    with torch.no_grad():
        full = model(ids)
        state, pieces = None, []
        for piece in ids.split([100, 1, 155], dim=1):
            out, state = model.stream(piece, state)
            pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=2e-3, atol=2e-3)
