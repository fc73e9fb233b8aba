"""Each ablation switch of the paper's Table 5 really removes its component."""

import pytest
import torch

from titans_megatron import build_model
from titans_core.branches import MemoryBranch
from tests.titans_megatron.model_configs import small_config


def _memory_inputs(model, ids):
    """The gates and q/k/v each MemoryBranch hands to the op, recorded during one forward."""
    seen = []
    for module in model.modules():
        if isinstance(module, MemoryBranch):
            original = module.inputs

            def record(*args, _original=original, **kwargs):
                result = _original(*args, **kwargs)
                seen.append(result[0])
                return result
            module.inputs = record
    model(ids)
    return seen


def _ids(config):
    return torch.randint(0, config.vocab_size, (2, config.seq_length), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", ["lmm", "mag", "mal", "mac"])
def test_momentum_and_forgetting_switches(variant):
    config = small_config(variant, memory_momentum=False, memory_forgetting=False)
    seen = _memory_inputs(build_model(config), _ids(config))
    assert seen
    for q, k, v, lr, momentum, forget in seen:
        assert torch.all(momentum == 0) and torch.all(forget == 0)
        assert torch.all(lr > 0)
    on = small_config(variant)
    for q, k, v, lr, momentum, forget in _memory_inputs(build_model(on), _ids(on)):
        assert torch.all(momentum > 0) and torch.all(forget > 0)


def test_conv_switch():
    config = small_config("lmm", memory_conv=False)
    model = build_model(config)
    model(_ids(config)).sum().backward()
    convs = [m.conv_weight for m in model.modules() if isinstance(m, MemoryBranch)]
    assert convs and all(w.grad is None for w in convs)
    with_conv = build_model(small_config("lmm"))
    with_conv(_ids(config)).sum().backward()
    assert all(m.conv_weight.grad.abs().sum() > 0 for m in with_conv.modules() if isinstance(m, MemoryBranch))


def _count(model, name):
    return sum(p.numel() for n, p in model.named_parameters() if name in n)


@pytest.mark.parametrize("variant", ["lmm", "mag", "mal", "mac"])
def test_persistent_deep_and_memory_switches(variant):
    full = build_model(small_config(variant))
    assert _count(full, "persistent") == 2 * 4 * 64  # layers x tokens x hidden
    assert _count(build_model(small_config(variant, persistent_memory=False)), "persistent") == 0

    shallow = build_model(small_config(variant, deep_memory=False))
    inits = [m.memory_init for m in shallow.modules() if isinstance(m, MemoryBranch)]
    assert inits and all(len(p) == 1 and p[0].shape[-2:] == (32, 32) for p in inits)

    if variant == "lmm":
        with pytest.raises(ValueError, match="leaves variant 'lmm' .* with no mixer"):
            small_config(variant, memory_enabled=False)
    else:
        no_memory = build_model(small_config(variant, memory_enabled=False))
        assert not any(isinstance(m, MemoryBranch) for m in no_memory.modules())


def test_momentum_ema_scales_theta():
    """memory_momentum_ema hands the op theta * (1 - eta) (same weights; the first layer's memory sees
    the same inputs, later layers differ because the first one's output does)."""
    config = small_config("lmm", memory_momentum_ema=False)
    (*_, lr, momentum, _f) = _memory_inputs(build_model(config), _ids(config))[0]
    (*_, lr_ema, momentum_ema, _g) = _memory_inputs(build_model(small_config("lmm", memory_momentum_ema=True)), _ids(config))[0]
    torch.testing.assert_close(momentum_ema, momentum)
    torch.testing.assert_close(lr_ema, lr * (1 - momentum))


def test_value_norm_switch():
    for on in (True, False):
        config = small_config("lmm", memory_value_norm=on)
        (_, _, v, *_), *_ = _memory_inputs(build_model(config), _ids(config))
        norms = v.norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) == on
