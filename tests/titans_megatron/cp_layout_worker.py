"""One rank of a context-parallel group (spawned by test_context_parallel.py): to_heads / to_sequence on
this rank's shard of tensors every rank can draw whole, outputs and input gradients saved per rank."""

import os
import sys
import warnings

import torch
import torch.distributed as dist


def main(out_dir):
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from titans_megatron.parallel import enable_cpu_collectives

    enable_cpu_collectives()
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(context_parallel_size=dist.get_world_size())
    from titans_megatron.context_parallel import cp_rank, cp_size, split_sequence, to_heads, to_sequence

    cp, rank = cp_size(), cp_rank()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 3, 8, generator=g), torch.randn(12, 3, 4 * cp, generator=g)  # whole [s, b, n]
    wa, wb, wy = torch.randn(12, 3, 8 // cp, generator=g), torch.randn(12, 3, 4, generator=g), torch.randn(12 // cp, 3, 8, generator=g)
    la, lb = (split_sequence(t, 0, cp, rank).clone().requires_grad_() for t in (a, b))
    ha, hb = to_heads(la, lb)
    back = to_sequence(ha)
    ((ha * wa).sum() + (hb * wb).sum() + (back * wy[:, :, :]).sum()).backward()
    torch.save({"ha": ha.detach(), "hb": hb.detach(), "back": back.detach(), "ga": la.grad, "gb": lb.grad},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
