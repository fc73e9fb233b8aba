"""One rank of ``torchrun``: load checkpoints at this run's tensor-parallel size (the number of
processes) and write the logits of fixed token ids (spawned by test_distributed.py)."""

import sys
import warnings

import torch


def logits(checkpoints, layout=None) -> dict:
    """{str(path): logits of fixed token ids} for each checkpoint, loaded at ``layout``'s tensor-parallel
    size (one process when None: callable in the test's own process)."""
    from titans_pretrain.checkpoint import load_model

    results = {}
    for path in map(str, checkpoints):
        _, model_config, model, _ = load_model(path, layout)
        ids = torch.randint(0, model_config.vocab_size, (2, model_config.seq_length),
                            generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            results[path] = model(ids)
    return results


def main(out_path, *checkpoints):
    warnings.filterwarnings("ignore")
    from titans_pretrain.distributed import init_distributed

    layout = init_distributed(int(__import__("os").environ.get("WORLD_SIZE", "1")))
    results = logits(checkpoints, layout)
    if layout.is_main:
        torch.save(results, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
