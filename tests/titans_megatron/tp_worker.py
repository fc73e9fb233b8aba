"""One rank of a tensor-parallel run (spawned by test_tensor_parallel.py): logits and full gradients."""

import sys
import warnings

import torch
import torch.distributed as dist


def run(rank, world_size, port, variants, out_path, sequence_parallel):
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}")
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world_size)  # build_model joins it
    from tests.titans_megatron.tp_reference import assembled, assembled_grads, forward_backward

    results = {}
    for variant in variants:
        model, logits = forward_backward(variant, tensor_model_parallel_size=world_size,
                                         sequence_parallel=sequence_parallel)
        results[variant] = {"logits": logits.detach(), "grads": assembled_grads(model),
                            "checkpoint": assembled(model.gpt.sharded_state_dict())}
    if rank == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    rank, world, port, out, sp = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
    run(rank, world, port, sys.argv[6].split(","), out, sp)
