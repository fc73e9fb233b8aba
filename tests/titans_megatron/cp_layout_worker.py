"""One rank of 4 (spawned by test_context_parallel.py): to_heads / to_sequence on this rank's shard of
tensors every rank can draw whole, over Megatron's context-parallel group of 4 and over explicit groups
of 2 (ranks 0-1, 2-3); outputs and input gradients saved per group size and rank."""

import os
import sys
import warnings

import torch
import torch.distributed as dist


def run(cp, rank, group, out_path):
    from titans_megatron.context_parallel import split_sequence, to_heads, to_sequence

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 3, 8, generator=g), torch.randn(12, 3, 4 * cp, generator=g)  # whole [s, b, n]
    wa, wb, wy = (torch.randn(*shape, generator=g) for shape in ((12, 3, 8 // cp), (12, 3, 4), (12 // cp, 3, 8)))
    la, lb = (split_sequence(t, 0, cp, rank).clone().requires_grad_() for t in (a, b))
    ha, hb = to_heads(la, lb, group=group)
    back = to_sequence(ha, group=group)
    ((ha * wa).sum() + (hb * wb).sum() + (back * wy).sum()).backward()
    torch.save({"rank": rank, "ha": ha.detach(), "hb": hb.detach(), "back": back.detach(), "ga": la.grad,
                "gb": lb.grad}, out_path)


def main(out_dir):
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from titans_megatron.parallel import enable_cpu_collectives

    enable_cpu_collectives()
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(context_parallel_size=dist.get_world_size())
    from titans_megatron.context_parallel import cp_rank, cp_size

    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank makes every group
    for cp in (2, dist.get_world_size()):
        group = pairs[dist.get_rank() // 2] if cp == 2 else None  # None: Megatron's context-parallel group
        rank = dist.get_rank(group) if group is not None else cp_rank()
        assert (group.size() if group is not None else cp_size()) == cp
        run(cp, rank, group, os.path.join(out_dir, f"cp{cp}_rank{dist.get_rank()}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
