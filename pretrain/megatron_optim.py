"""Megatron-core's DDP and optimizer (plain or distributed) for the training loop, on GPU and on CPU.

``wrap_model`` puts the model in ``megatron.core.distributed.DistributedDataParallel`` (contiguous
gradient buckets reduced over the data-parallel group); ``build_optimizer`` makes Megatron's optimizer
over it (``use_distributed_optimizer``: AdamW state sharded over data-parallel ranks; Transformer
Engine's or apex's fused Adam when they import, else torch's AdamW). ``moment_slices`` /
``load_moment_slices`` read and write the AdamW state where it is: per parameter, the flat range of its
tensor-parallel shard this rank's optimizer holds (what pretrain/sharded_checkpoint.py saves, nothing
gathered). ``param_moments`` / ``load_param_moments`` gather it as parameter-shaped tensors (the previous
checkpoint format, pretrain/resharding.py, which still loads).

On CPU Megatron's optimizer code names ``device='cuda'`` literally and checks dtypes by
``tensor.type() == 'torch.cuda.FloatTensor'``; ``cuda_as_cpu`` (a no-op where CUDA exists) maps those to
the CPU inside the calls that need it, so the same code path runs, and is tested, over gloo.
"""

import contextlib
import inspect
from typing import Dict

import torch
from torch.overrides import TorchFunctionMode

from titans_pretrain import moments as moments_
from titans_pretrain.moments import MOMENTS
from titans_pretrain.param_groups import no_decay, parameter_groups


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
    layout = {}
    if distributed_optimizer and "full_param_layout" in inspect.signature(DistributedDataParallel).parameters:
        layout["full_param_layout"] = full_param_layout(model, ddp_config)
    return DistributedDataParallel(config=model_config, ddp_config=ddp_config, module=model, **layout)


def full_param_layout(model, ddp_config):
    """megatron-core >= 0.19 asks the caller for the distributed optimizer's parameter layout (computed
    inside DDP with a warning otherwise): the same computation, from DDP's own inputs (its trainable
    parameters in order, its bucket size rule, the data x context group)."""
    from megatron.core import parallel_state
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    dp = parallel_state.get_data_parallel_world_size()
    bucket = (ddp_config.bucket_size or max(40000000, 1000000 * dp)) if ddp_config.overlap_grad_reduce else None
    return DistributedOptimizer.compute_full_param_layout(
        [p for p in model.parameters() if p.requires_grad], bucket,
        parallel_state.get_data_parallel_world_size(with_context_parallel=True), ddp_config,
        expert_data_parallel_world_size=parallel_state.get_expert_data_parallel_world_size())


def build_optimizer(ddp_model, optim, distributed_optimizer: bool):
    """Megatron's AdamW for ``optim`` (titans_pretrain.config.OptimSection), parameters named by
    ``optim.no_decay`` exempt from weight decay as on the torch path. Parameters, gradients and
    optimizer state are fp32 (bf16 is autocast in the forward). Gradient clipping stays with the
    training loop (clip_grad=0 here), which skips non-finite steps first."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate
    from megatron.core.optimizer_param_scheduler import ParamGroupOverride

    config = OptimizerConfig(optimizer="adam", lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay,
                             adam_beta1=optim.betas[0], adam_beta2=optim.betas[1], adam_eps=optim.eps,
                             params_dtype=torch.float32, clip_grad=0.0,
                             use_distributed_optimizer=distributed_optimizer)
    exempt = ParamKey(with_name_predicate=ParamWithNamePredicate(
        name="optim.no_decay", fn=lambda param, name: no_decay(name, optim)))
    with cuda_as_cpu():
        optimizer = get_megatron_optimizer(config, [ddp_model], config_overrides={exempt: ParamGroupOverride(wd_mult=0.0)})
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


def param_moments(ddp_model, optimizer, all_ranks: bool = True) -> Dict[str, Dict[str, torch.Tensor]]:
    """{parameter name: {exp_avg, exp_avg_sq}} shaped like this rank's parameter shard, on the CPU.
    Collective over the data-parallel group under the distributed optimizer, whose ranks each hold a
    slice: gathered on every rank, or (``all_ranks`` False) on data-parallel rank 0 only, the others
    getting {}."""
    inner = _inner(optimizer)
    names = {p: n for n, p in ddp_model.module.named_parameters()}
    if not hasattr(inner, "get_parameter_state_dp_zero"):  # the plain optimizer: torch's state per parameter
        return {names[p]: {k: s[k].detach().cpu().clone() for k in ("exp_avg", "exp_avg_sq")}
                for p, s in inner.optimizer.state.items() if p in names}
    with cuda_as_cpu():  # NCCL where there is CUDA, Megatron's gloo groups on the CPU
        gathered = inner.get_parameter_state_dp_zero(use_gloo_comm=not torch.cuda.is_available(),
                                                     return_on_all_ranks=all_ranks)
    out = {}
    if gathered is None:
        return out
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


def _held_ranges(ddp_model, optimizer) -> Dict[torch.nn.Parameter, tuple]:
    """{parameter: (start, end)}: the flat range of it this rank's optimizer holds (the whole parameter
    without the distributed optimizer)."""
    inner = _inner(optimizer)
    if not hasattr(inner, "gbuf_ranges"):
        return {p: (0, p.numel()) for p in ddp_model.module.parameters() if p.requires_grad}
    return {p: (r["param"].start, r["param"].end) for per_buffer in inner.gbuf_ranges
            for per_dtype in per_buffer.values() for bucket in per_dtype for p, r in bucket["param_map"].items()}


def _held_state(inner, p) -> dict:
    if hasattr(inner, "gbuf_ranges"):
        return inner._get_main_param_and_optimizer_states(p)  # the shard's main param and its moments
    return inner.optimizer.state.get(p, {})


def moment_slices(ddp_model, optimizer) -> Dict[str, tuple]:
    """{parameter name: (start, end, {moment: flat tensor})} of what this rank holds; nothing gathered."""
    inner, names = _inner(optimizer), {p: n for n, p in ddp_model.module.named_parameters()}
    out = {}
    for p, (start, end) in _held_ranges(ddp_model, optimizer).items():
        state = _held_state(inner, p)
        if start < end and all(k in state for k in MOMENTS):
            out[names[p]] = (start, end, {k: state[k].detach().reshape(-1) for k in MOMENTS})
    return out


def load_moment_slices(ddp_model, optimizer, moments: Dict[str, Dict[str, torch.Tensor]], step_count: int) -> None:
    """Set the AdamW state from this rank's flat ranges of the moments and the step count; the model's
    parameters must already hold the checkpoint's values (the distributed optimizer's main shards are
    taken from them)."""
    inner = _inner(optimizer)
    names = {p: n for n, p in ddp_model.module.named_parameters()}
    held = _held_ranges(ddp_model, optimizer)
    if not hasattr(inner, "gbuf_ranges"):
        moments_.set_whole(inner.optimizer.state, ((n, p) for p, n in names.items()), moments, step_count)
        return
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "step": step_count} for g in inner.optimizer.param_groups]
    with cuda_as_cpu():
        inner.load_state_dict({"optimizer": {"param_groups": groups}})  # creates the state of every shard
    # load_state_dict gave all parameters one shared step tensor (torch AdamW counts once per parameter)
    steps = {p: s.pop("step") for p, s in inner.optimizer.state.items()}
    with torch.no_grad():  # fp32 parameters: the main shard is a view of the parameter itself
        for p, (start, end) in held.items():
            if start < end and names[p] in moments:
                inner._set_main_param_and_optimizer_states(p, {"param": p.detach().reshape(-1)[start:end].float(),
                                                               **moments[names[p]]})
    for p, s in steps.items():
        inner.optimizer.state[p]["step"] = s.clone()


class MegatronAdamW:
    """The training loop's optimizer path (interface in pretrain/optim.py) over Megatron-core: DDP
    gradient buckets (reduced during the last micro-batch's backward with ``optim.overlap_grad_reduce``,
    else after it), ``finalize_model_grads`` (data-parallel reduction and the sequence-parallel norm
    gradients), the norm and clipping of Megatron's optimizer, and its (distributed) AdamW step."""

    def __init__(self, model, model_config, optim):
        self.optim, self.module = optim, model
        self.model = wrap_model(model, model_config, optim.distributed_optimizer, optim.overlap_grad_reduce,
                                optim.bucket_size)
        self.optimizer = build_optimizer(self.model, optim, optim.distributed_optimizer)
        self.steps = 0  # AdamW's step count, kept here: fused optimizers keep it per group, torch per parameter
        self.checkpoint_state = _CheckpointView(self)

    def set_lr(self, lr: float) -> None:
        set_hyperparameters(self.optimizer, lr, self.optim.weight_decay)

    def zero_grad(self) -> None:
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()

    def micro_batch(self, last: bool):
        """Gradients accumulate locally until the last micro-batch, whose backward reduces them."""
        return contextlib.nullcontext() if last else self.model.no_sync()

    def reduce_gradients(self) -> float:
        from megatron.core.distributed import finalize_model_grads

        with cuda_as_cpu():
            finalize_model_grads([self.model])
            self.optimizer.prepare_grads()
            return float(self.optimizer.get_grad_norm())

    def step(self, grad_norm: float) -> None:
        from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

        with cuda_as_cpu():
            for inner in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
                params = inner.get_parameters()
                if params and self.optim.grad_clip > 0:
                    clip_grad_by_total_norm_fp32(params, self.optim.grad_clip, grad_norm)
            self.optimizer.step_with_ready_grads()
        self.steps += 1


class _CheckpointView:
    """The AdamW state in torch.optim's form (``state`` by parameter, ``param_groups`` as
    titans_pretrain.optim.TorchAdamW makes them, ``load_state_dict``), so pretrain/resharding.py saves and
    loads one format on both paths. Reading ``state`` is collective over the data-parallel group under
    the distributed optimizer (data-parallel rank 0 gets the moments: it writes them)."""

    def __init__(self, path: MegatronAdamW):
        self.path = path
        optim = path.optim
        self.param_groups = torch.optim.AdamW(parameter_groups(path.module, optim), lr=optim.lr,
                                              betas=tuple(optim.betas), eps=optim.eps).param_groups

    @property
    def state(self) -> Dict[torch.nn.Parameter, dict]:
        moments = param_moments(self.path.model, self.path.optimizer, all_ranks=False)
        if not self.path.steps:
            return {}  # no step taken: torch's AdamW has no state yet either
        named = dict(self.path.module.named_parameters())
        return {named[n]: {"step": torch.tensor(float(self.path.steps)), **m} for n, m in moments.items()}

    def moment_ranges(self) -> Dict[str, tuple]:
        names = {p: n for n, p in self.path.module.named_parameters()}
        return {names[p]: r for p, r in _held_ranges(self.path.model, self.path.optimizer).items() if r[0] < r[1]}

    def moment_slices(self) -> Dict[str, tuple]:
        return moment_slices(self.path.model, self.path.optimizer) if self.path.steps else {}

    def step_count(self):
        return self.path.steps or None

    def load_moments(self, moments: Dict[str, Dict[str, torch.Tensor]], step: int) -> None:
        self.path.steps = step
        load_moment_slices(self.path.model, self.path.optimizer, moments, step)

    def load_state_dict(self, state_dict: dict) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        names = {p: n for n, p in self.path.module.named_parameters()}
        state = state_dict["state"]
        if not state:
            return
        steps = {float(s["step"]) for s in state.values()}
        if len(steps) != 1:
            raise ValueError(f"the checkpoint's parameters have different AdamW step counts {sorted(steps)}")
        self.path.steps = int(steps.pop())
        moments = {names[params[i]]: {k: s[k] for k in ("exp_avg", "exp_avg_sq")} for i, s in state.items()}
        load_param_moments(self.path.model, self.path.optimizer, moments, self.path.steps)
