"""One rank of a tensor x context-parallel run (spawned by test_context_parallel.py): each context-
parallel rank feeds its part of the sequence; the logits gathered over the sequence and the gradients
(summed over the context-parallel group, as the data-parallel reduction does) are saved as full tensors,
for each sequence-parallel setting asked for (argv: out, tensor, variants, settings as "0,1")."""

import sys
import warnings

import torch
import torch.distributed as dist


def mixer_names(model):
    """The class names of the model's token mixers (not the mixers inside one, as MAL's memory layer)."""
    from titans_core.gated_delta_net import GatedDeltaNetForward
    from titans_core.mixers import Mixer

    names = {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, (Mixer, GatedDeltaNetForward))}
    return [cls for n, cls in names.items() if not any(n.startswith(outer + ".") for outer in names)]


def main(out_path, tensor, variants, sequence_parallel_settings):
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from titans_megatron.parallel import enable_cpu_collectives

    enable_cpu_collectives()
    from megatron.core import parallel_state

    context = dist.get_world_size() // tensor
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor, context_parallel_size=context)
    from tests.titans_megatron.tp_reference import assembled_grads
    from tests.titans_megatron.cp_reference import cp_forward_backward

    from titans_megatron import context_parallel

    calls = []  # the forward's all-to-alls (their backward is autograd's, not a call of this name)
    all_to_all = context_parallel.all_to_all
    context_parallel.all_to_all = lambda *a, **kw: calls.append(1) or all_to_all(*a, **kw)
    results = {}
    for sequence_parallel in sequence_parallel_settings:
        for variant in variants:
            calls.clear()
            model, logits = cp_forward_backward(variant, tensor, context, sequence_parallel)
            results.setdefault(sequence_parallel, {})[variant] = {
                "logits": logits.detach(), "grads": assembled_grads(model), "all_to_alls": len(calls),
                "mixers": mixer_names(model)}
    if dist.get_rank() == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), [flag == "1" for flag in sys.argv[4].split(",")])
