"""What differs between the two megatron-core releases the project is tested on (0.16.1 on Python
3.10/3.11, 0.19.x on 3.12), pinned to one behaviour: the residual stream's dtype under autocast, the MLP
built without Megatron's rewrapping, the distributed optimizer's layout handed to DDP, and the CPU's
stand-in for CUDA streams. Each test runs on whichever release is installed (README, Installing)."""

import inspect
import logging

import pytest
import torch

from titans_megatron import build_model
from titans_megatron.specs import get_bias_dropout_add
from tests.titans_megatron.model_configs import small_config


# fused: megatron-core 0.19 compiles it with torch.compile, whose C++ compiler is a process
@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.process)])
def test_residual_takes_the_branchs_dtype(fused):
    """0.16's rule on every release (0.19 would upcast the branch to the fp32 residual instead)."""
    x = torch.randn(4, 2, 8).bfloat16()
    residual = torch.randn(4, 2, 8)
    expected = residual.bfloat16() + x  # before the call: in eval it adds in place
    out = get_bias_dropout_add(training=False, fused=fused)((x, None), residual, 0.0)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


def test_residual_stream_is_bf16_under_autocast():
    model = build_model(small_config("mag"), seed=0)
    dtypes = []
    for layer in model.gpt.decoder.layers:
        layer.register_forward_hook(lambda module, args, out: dtypes.append(out[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 97, (2, 32)))
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_mlp_is_megatrons_without_rewrapping(caplog):
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.mlp import MLP

    with caplog.at_level(logging.WARNING):
        model = build_model(small_config("mag"), seed=0)
    mlp = model.gpt.decoder.layers[0].mlp
    assert type(mlp) is MLP
    assert isinstance(mlp.linear_fc1, ColumnParallelLinear) and isinstance(mlp.linear_fc2, RowParallelLinear)
    assert not [r for r in caplog.records if "Rewrapping" in r.getMessage()]


@pytest.mark.parametrize("overlap", [False, True])
def test_distributed_optimizer_layout_is_ddps_own(caplog, overlap):
    """On 0.19 the layout we hand DDP equals the one it computes itself (and it warns no more); 0.16 has
    no such argument and computes its own."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from titans_pretrain.megatron_optim import wrap_model

    model = build_model(small_config("mag"), seed=0)
    with caplog.at_level(logging.WARNING):
        ours = wrap_model(model.gpt, model.gpt.config, distributed_optimizer=True, overlap_grad_reduce=overlap,
                          bucket_size=4096)
    assert not [r for r in caplog.records if "full_param_layout not provided" in r.getMessage()]
    if "full_param_layout" not in inspect.signature(DistributedDataParallel).parameters:
        pytest.skip("megatron-core < 0.19: DDP computes the layout itself")
    theirs = DistributedDataParallel(config=model.gpt.config, module=model.gpt, ddp_config=DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=overlap, use_distributed_optimizer=True, bucket_size=4096))
    assert ours.full_param_layout.layouts and ours.full_param_layout == theirs.full_param_layout


def test_cpu_stands_in_for_cuda_streams():
    """0.19's gradient buffers order their reductions on torch.cuda.current_stream(); on CPU (patched
    by build_model) a stream with nothing to wait on answers."""
    if torch.cuda.is_available():
        pytest.skip("CUDA's own streams")
    build_model(small_config("mag"), seed=0)
    stream = torch.cuda.current_stream()
    stream.wait_stream(stream)
    stream.wait_event(None)
