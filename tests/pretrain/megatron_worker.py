"""One rank of ``torchrun`` (spawned by test_megatron_optim.py): 4 steps of a tiny model under
Megatron-core DDP and optimizer, its AdamW state carried through param_moments / load_param_moments
into a fresh model and optimizer after step 2; rank 0 writes the per-step losses."""

import json
import sys
import warnings

import torch
import torch.distributed as dist


def main(out_path, tensor, distributed):
    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state

    from titans_pretrain import megatron_optim
    from titans_pretrain.config import OptimSection
    from tests.pretrain.test_megatron_optim import OPTIM, batch, loss_of, tiny_config
    from titans_megatron import build_model
    from titans_megatron.parallel import ensure_model_parallel

    dist.init_process_group("gloo")
    ensure_model_parallel(tensor)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    config = tiny_config(tensor)
    optim = OptimSection(**OPTIM)

    def fresh():
        model = megatron_optim.wrap_model(build_model(config, seed=3), config, distributed,
                                          overlap_grad_reduce=distributed, bucket_size=5000)  # several buckets
        return model, megatron_optim.build_optimizer(model, optim, distributed)

    model, optimizer = fresh()
    losses = []
    for step in range(4):
        if step == 2:  # a new model and optimizer, restored from parameters and moments
            moments = megatron_optim.param_moments(model, optimizer)
            weights = {n: p.detach().clone() for n, p in model.module.named_parameters()}
            model, optimizer = fresh()
            with torch.no_grad():
                for n, p in model.module.named_parameters():
                    p.copy_(weights[n])
            megatron_optim.load_param_moments(model, optimizer, moments, step)
        model.zero_grad_buffer()
        optimizer.zero_grad()
        loss = loss_of(model, batch(step).chunk(dp)[dp_rank])
        loss.backward()
        model.finish_grad_sync()
        megatron_optim.step(optimizer)
        mean = loss.detach().clone()
        dist.all_reduce(mean, group=parallel_state.get_data_parallel_group())
        losses.append(float(mean) / dp)
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(losses, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1")
