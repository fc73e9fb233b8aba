"""The MFU FLOP model against torch's FLOP counter on real passes: the matmul term is exact, and the
memory op's forward model is what the torch backend computes (its end-of-chunk update, an in-place
baddbmm_, is invisible to the counter and added here)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from titans_kernels import neural_memory
from titans_kernels.memory_op.flops import memory_forward_flops
from titans_megatron import TitansConfig, build_model
from titans_megatron.flops import matmul_parameters, mean_attended_keys, training_flops_per_token

SEQ = 128


def counted_per_token(variant, **fields):
    config = TitansConfig.from_preset("tiny", variant=variant, seq_length=SEQ, vocab_size=512, memory_backend="torch",
                                      segment_length=64, window_size=48, **fields)
    model = build_model(config)
    ids = torch.randint(0, 512, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(ids).square().mean().backward()
    # matmuls only: the counter prices the depthwise conv's backward as a dense convolution
    counts = counter.get_flop_counts()["Global"]
    return config, model, sum(n for op, n in counts.items() if "conv" not in str(op)) / ids.numel()


def test_matmul_term_is_exact():
    config, model, counted = counted_per_token("transformer++")
    # torch's counter does not count CPU attention kernels: what it sees is the projections and the head
    assert counted == pytest.approx(6 * matmul_parameters(model), rel=1e-3)
    assert training_flops_per_token(config, matmul_parameters(model)) == pytest.approx(
        6 * matmul_parameters(model) + config.num_layers * 12 * config.hidden_size * (SEQ + 1) / 2)


@pytest.mark.parametrize("d, depth, expansion, chunk", [(32, 2, 4, 16), (64, 2, 2, 16), (64, 2, 4, 64),
                                                       (64, 1, 4, 16), (16, 3, 4, 8)])
def test_memory_forward_model_is_what_the_dual_form_computes(d, depth, expansion, chunk):
    B, T, H = 1, 4 * chunk, 2
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.nn.functional.normalize(torch.randn(B, T, H, d, generator=g), dim=-1) for _ in range(3))
    lr, momentum, forget = (s * torch.rand(B, T, H, generator=g) for s in (0.02, 0.9, 0.1))
    dims = [d] + [expansion * d] * (depth - 1) + [d]
    weights = tuple(torch.randn(H, a, b, generator=g) / a**0.5 for a, b in zip(dims, dims[1:]))
    with FlopCounterMode(display=False) as counter:
        neural_memory(q, k, v, lr, momentum, forget, weights, chunk_size=chunk, backend="torch")
    update = sum(4 * a * b for a, b in zip(dims, dims[1:]))
    counted = counter.get_total_flops() / (B * T * H) + update
    # what remains is the gates' C x C coefficient products, 2 C (C + 1): not in the model
    assert memory_forward_flops(d, depth, expansion, chunk) == pytest.approx(counted - 2 * chunk * (chunk + 1))


def test_mean_attended_keys():
    def config(variant, **fields):
        return TitansConfig.from_preset("tiny", variant=variant, seq_length=8, segment_length=4, window_size=3,
                                        num_persistent_tokens=2, num_memory_tokens=1, memory_chunk_size=4, **fields)
    assert mean_attended_keys(config("transformer++")) == (1 + 2 + 3 + 4 + 5 + 6 + 7 + 8) / 8
    assert mean_attended_keys(config("mag")) == (1 + 2 + 3 * 6) / 8 + 2
    assert mean_attended_keys(config("mac")) == (1 + 2 + 3 + 4) / 4 + 2 + 1
    # own-query retrieval: one memory token per position, seen causally like the segment's tokens
    assert mean_attended_keys(config("mac", mac_retrieval="own_query")) == 2 * (1 + 2 + 3 + 4) / 4 + 2
    assert mean_attended_keys(config("lmm")) == 0
    assert mean_attended_keys(config("gdn")) == 0

