"""Pretrain a Titans model on data_prep's shards.

    python pretrain/train.py --config configs/tiny_mag.json [section.key=value ...]
    torchrun --nproc_per_node 2 pretrain/train.py --config ... parallel.tensor=2   # or under srun
    python pretrain/train.py --check --world 16 --config ...   # the inputs only: data, checkpoints, layout

Exit status: 0 done; 3 stopped by SIGTERM / SIGUSR1 or run.max_minutes after saving (requeue); 2 bad
configuration or data (nothing trained); 1 aborted after run.max_bad_steps non-finite steps.
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the installed package (titans_*) is imported, never this folder's files by bare name

import argparse  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="JSON training config (configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value (value parsed as JSON)")
    p.add_argument("--check", action="store_true", help="check the inputs (pretrain/preflight.py), train nothing")
    p.add_argument("--world", type=int, default=None, help="with --check: the number of processes the run will have "
                   "(default: this launch's WORLD_SIZE / SLURM_NTASKS, else 1)")
    args = p.parse_args(argv)
    from titans_pretrain.config import ConfigError, load_config

    try:  # before the imports of torch and megatron-core (seconds): a mistyped override is answered at once
        config = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from titans_pretrain.checkpoint import CheckpointError
    from titans_pretrain.data import DataError
    from titans_pretrain.distributed import LaunchError
    from titans_pretrain.trainer import TrainingAborted, train

    try:
        if args.check:
            from titans_pretrain.preflight import check

            world = args.world or int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
            print("\n".join(check(config, world).lines), flush=True)
            return 0
        return train(config, log=lambda line: print(line, flush=True))
    except (ConfigError, DataError, CheckpointError, LaunchError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingAborted as e:
        print(f"aborted: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
