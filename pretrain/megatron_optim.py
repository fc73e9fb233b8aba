"""Megatron-core's DDP and optimizer (plain or distributed) for the training loop, on GPU and on CPU.

``wrap_model`` puts the model in ``megatron.core.distributed.DistributedDataParallel`` (contiguous
gradient buckets reduced over the data-parallel group); ``build_optimizer`` makes Megatron's optimizer
over it (``use_distributed_optimizer``: AdamW state sharded over data-parallel ranks; Transformer
Engine's or apex's fused Adam when they import, else torch's AdamW). ``param_moments`` /
``load_param_moments`` read and write the AdamW state as parameter-shaped tensors of this rank's
tensor-parallel shard, the form ``pretrain/resharding.py`` stores, whatever the optimizer.

On CPU Megatron's optimizer code names ``device='cuda'`` literally and checks dtypes by
``tensor.type() == 'torch.cuda.FloatTensor'``; ``cuda_as_cpu`` (a no-op where CUDA exists) maps those to
the CPU inside the calls that need it, so the same code path runs, and is tested, over gloo.
"""

import contextlib
from typing import Dict

import torch
from torch.overrides import TorchFunctionMode


def _is_cuda(device) -> bool:
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class _CudaAsCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:  # the query form: a dtype check
            name = func(*args)
            return "torch.cuda." + name[len("torch."):] if not name.startswith("torch.cuda.") else name
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_as_cpu():
    if torch.cuda.is_available():
        yield
        return
    with _CudaAsCpu():
        yield


def wrap_model(model, model_config, distributed_optimizer: bool, overlap_grad_reduce: bool = False, bucket_size=None):
    """``overlap_grad_reduce`` reduces gradient buckets (of ``bucket_size`` elements) during the backward
    pass; without it the whole buffer is one bucket reduced by ``finish_grad_sync``."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=overlap_grad_reduce,
                                               use_distributed_optimizer=distributed_optimizer,
                                               bucket_size=bucket_size)
    return DistributedDataParallel(config=model_config, ddp_config=ddp_config, module=model)


def build_optimizer(ddp_model, optim, distributed_optimizer: bool, bf16: bool):
    """Megatron's AdamW for ``optim`` (pretrain.config.OptimSection); gradient clipping stays with the
    training loop (clip_grad=0 here), which skips non-finite steps before calling ``step``."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(optimizer="adam", lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay,
                             adam_beta1=optim.betas[0], adam_beta2=optim.betas[1], adam_eps=optim.eps,
                             bf16=bf16, params_dtype=torch.float32, clip_grad=0.0,
                             use_distributed_optimizer=distributed_optimizer)
    with cuda_as_cpu():
        optimizer = get_megatron_optimizer(config, [ddp_model])
    set_hyperparameters(optimizer, optim.lr, optim.weight_decay)
    return optimizer


def set_hyperparameters(optimizer, lr: float, weight_decay: float) -> None:
    """What Megatron's OptimizerParamScheduler would do: get_megatron_optimizer only tags the groups
    (wd_mult 0 for norms and biases)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay * group.get("wd_mult", 1.0)


def step(optimizer) -> None:
    with cuda_as_cpu():
        optimizer.step()


def _inner(optimizer):
    (inner,) = getattr(optimizer, "chained_optimizers", [optimizer])
    return inner


def param_moments(ddp_model, optimizer) -> Dict[str, Dict[str, torch.Tensor]]:
    """{parameter name: {exp_avg, exp_avg_sq}} shaped like this rank's parameter shard, on the CPU."""
    inner = _inner(optimizer)
    names = {p: n for n, p in ddp_model.module.named_parameters()}
    if not hasattr(inner, "get_parameter_state_dp_zero"):  # the plain optimizer: torch's state per parameter
        return {names[p]: {k: s[k].detach().cpu().clone() for k in ("exp_avg", "exp_avg_sq")}
                for p, s in inner.optimizer.state.items() if p in names}
    with cuda_as_cpu():
        gathered = inner.get_parameter_state_dp_zero(use_gloo_comm=True, return_on_all_ranks=True)
    out = {}
    for index, buffer in enumerate(inner.buffers):
        (world,) = gathered[index].values()
        # the gathered tensors drop each bucket's end padding: a parameter's offset is its offset in the
        # padded buffer, less its bucket's start, plus the unpadded sizes of the buckets before it
        starts, total = [], 0
        for bucket in buffer.buckets:
            starts.append(total - bucket.offset)
            total += bucket.numel_unpadded
        for p, (start, end, bucket_id) in buffer.param_index_map.items():
            shift = starts[bucket_id]
            out[names[p]] = {k: world[k][start + shift:end + shift].view(p.shape).clone()
                             for k in ("exp_avg", "exp_avg_sq")}
    return out


def load_param_moments(ddp_model, optimizer, moments: Dict[str, Dict[str, torch.Tensor]], step_count: int) -> None:
    """Set the AdamW state from parameter-shaped moments (this rank's shards) and the step count; the
    model's parameters must already hold the checkpoint's values."""
    inner = _inner(optimizer)
    named = dict(ddp_model.module.named_parameters())
    if not hasattr(inner, "load_parameter_state_from_fully_reshardable"):
        for name, p in named.items():
            inner.optimizer.state[p] = {"step": torch.tensor(float(step_count)),
                                        **{k: v.to(p.device, p.dtype).clone() for k, v in moments[name].items()}}
        return
    names = {p: n for n, p in named.items()}
    state, index = {}, 0
    for buffer in inner.buffers:
        for p in buffer.param_index_map:
            m = moments[names[p]]
            state[index] = {"fp32_param": p.detach().float(), "exp_avg": m["exp_avg"], "exp_avg_sq": m["exp_avg_sq"]}
            index += 1
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "step": step_count} for g in inner.optimizer.param_groups]
    with cuda_as_cpu():
        inner.load_state_dict({"optimizer": {"param_groups": groups}})
    # the parameter-state load supplies every key but "step", and load_state_dict gave all parameters
    # one shared step tensor (torch AdamW would count it once per parameter): one copy each
    steps = {p: s.pop("step") for p, s in inner.optimizer.state.items()}
    with cuda_as_cpu():
        inner.load_parameter_state_from_fully_reshardable(state)
    for p, s in steps.items():
        inner.optimizer.state[p]["step"] = s.clone()
