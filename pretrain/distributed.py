"""Process layout: torchrun, srun or one plain process; Megatron's tensor / data parallel groups; the
collectives of torch's optimizer path (gradient averaging, a tensor-parallel-aware gradient norm) and of
the loop (agreement between ranks on when to stop).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; under srun the launcher sets
MASTER_ADDR / MASTER_PORT and SLURM gives SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID. NCCL on GPU,
gloo on CPU. Megatron's rank order: tensor-parallel ranks adjacent, then context-parallel ones; the
data-parallel size is world / (tensor x context), and the ranks of one replica (its tensor- and
context-parallel ranks) read the same samples. Gradients and the loss are averaged over data x context
(the loss is scaled so that this gives the mean over the data-parallel ranks of each replica's whole
sequences: pretrain/language_model.py). Pipeline parallelism is not supported.
"""

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist


class LaunchError(Exception):
    pass


@dataclass(frozen=True)
class Layout:
    rank: int
    world: int
    local_rank: int
    tensor: int
    tp_rank: int
    data: int
    dp_rank: int
    context: int = 1
    cp_rank: int = 0

    def as_dict(self):
        return asdict(self)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This process's GPU (the launcher's local rank), or the CPU."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _launch_env():
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise LaunchError(f"running under srun with {env['SLURM_NTASKS']} tasks but {missing} are not set "
                              "(slurm/launch.sh sets them from the job's node list)")
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def init_distributed(tensor: int, context: int = 1) -> Layout:
    """Join the launcher's process group (or make a one-rank one) and Megatron's parallel state."""
    from megatron.core import parallel_state

    from titans_megatron.parallel import ensure_model_parallel

    rank, world, local = _launch_env()
    if world % (tensor * context):
        raise LaunchError(f"{model_parallel_sizes(tensor, context)} must divide the number of processes ({world})")
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=rank, world_size=world)
    ensure_model_parallel(tensor, context)
    return Layout(rank, world, local, tensor, parallel_state.get_tensor_model_parallel_rank(),
                  parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank(),
                  context, parallel_state.get_context_parallel_rank())


def _data_and_context_group():
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def model_parallel_sizes(tensor: int, context: int) -> str:
    """How errors name the processes one replica takes."""
    if context == 1:
        return f"parallel.tensor ({tensor})"
    return f"parallel.tensor x parallel.context ({tensor} x {context} = {tensor * context})"


def average_gradients(model: torch.nn.Module, layout: Layout) -> None:
    """Mean of the gradients over the data x context-parallel ranks (one flat all-reduce)."""
    ranks = layout.data * layout.context
    if ranks == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=_data_and_context_group())
    flat /= ranks
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gradient_norm(model: torch.nn.Module, layout: Layout) -> float:
    """The norm of the whole model's gradient: tensor-parallel shards summed over their group,
    replicated parameters counted once. Every rank gets the same norm, so replicas stay identical."""
    sharded = torch.zeros((), dtype=torch.float64, device=layout.device)
    replicated = torch.zeros((), dtype=torch.float64, device=layout.device)
    for p in model.parameters():
        if p.grad is not None:
            sq = p.grad.detach().double().pow(2).sum()
            if getattr(p, "tensor_model_parallel", False):
                sharded += sq
            else:
                replicated += sq
    if layout.tensor > 1:
        from megatron.core import parallel_state

        dist.all_reduce(sharded, group=parallel_state.get_tensor_model_parallel_group())
    return float((sharded + replicated).sqrt())


def clip_gradients(model: torch.nn.Module, max_norm: float, norm: float) -> None:
    """Scale the gradients to ``max_norm`` when their norm (``gradient_norm``) exceeds it (0: never)."""
    if 0 < max_norm < norm and math.isfinite(norm):
        scale = max_norm / (norm + 1e-6)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)


def mean_over_data_parallel(value: torch.Tensor, layout: Layout) -> float:
    """The data x context-parallel mean of a 0-d tensor on ``layout.device``, read on the host once."""
    ranks = layout.data * layout.context
    if ranks == 1:
        return float(value)
    t = value.detach().to(layout.device, torch.float64).reshape(1).clone()  # NCCL reduces GPU tensors only
    dist.all_reduce(t, group=_data_and_context_group())
    return float(t) / ranks


def any_rank(flag: bool, layout: Layout) -> bool:
    """True on every rank if it is true on any: ranks stop (and save) at the same step."""
    if layout.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=layout.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(layout: Layout) -> None:
    if layout.world > 1:
        dist.barrier()

