"""Validation loss and perplexity of a checkpoint on the val split of a shard set.

    python pretrain/val_loss.py --checkpoint CKPT_DIR [--data DIR] [--batches N]

CKPT_DIR is a run's checkpoint folder (its ``latest`` is used) or one ``iter_NNNNNNN`` folder, saved at
any tensor-parallel size (it is loaded into one process). The data defaults to the run's data.dir. The paper's full evaluation is eval_suite/run.py.
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the installed package (titans_*) is imported, never this folder's files by bare name

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402


def validation(checkpoint_dir, data_dir=None, batches=None):
    from titans_pretrain.checkpoint import load_model
    from titans_pretrain.language_model import validation_loss

    config, model_config, model, saved = load_model(checkpoint_dir)
    data = data_dir or config.data.dir
    loss = validation_loss(model, data, config.schedule.micro_batch, config.data.seed, model_config.seq_length, batches,
                    config.run.precision)
    return {"checkpoint": saved.folder, "step": saved.step, "data": data, "val_loss": loss,
            "val_perplexity": math.exp(loss)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--batches", type=int, default=None, help="default: one pass over the val split")
    args = p.parse_args(argv)
    from titans_pretrain.checkpoint import CheckpointError
    from titans_pretrain.config import ConfigError
    from titans_pretrain.data import DataError

    try:
        result = validation(args.checkpoint, args.data, args.batches)
    except (FileNotFoundError, ValueError, CheckpointError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
