"""Checks a run's inputs before any GPU time is spent: what ``train.py --check`` (and so the SLURM
launcher, before ``srun``) and the start of every training run do.

Nothing heavy: no model is built and no process group joined. Each failure names the key, file or
folder and what was expected.
"""

import os
import uuid
from dataclasses import dataclass, field
from typing import List

from titans_pretrain import checkpoint as ckpt
from titans_pretrain.config import ConfigError, TrainConfig
from titans_pretrain.data import DataError, ShardStream, read_manifest
from titans_pretrain.distributed import model_parallel_sizes
from titans_data_prep.manifest import Manifest


def _writable(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write_probe_{uuid.uuid4().hex}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"checkpoint.dir {directory}: not writable ({e.strerror})") from e


@dataclass
class Plan:
    """What the checks derived, handed to the trainer so that it does not derive it again."""

    model_config: object  # titans_megatron.TitansConfig
    train_steps: int
    data_parallel: int
    manifest: Manifest  # the shards' manifest.json
    lines: List[str] = field(default_factory=list)  # the summary the run prints first


def check(config: TrainConfig, world: int) -> Plan:
    """Raise ConfigError / DataError / CheckpointError for the first problem; return the plan."""
    for key in ("data.dir", "checkpoint.dir"):
        section, name = key.split(".")
        if not getattr(getattr(config, section), name):
            raise ConfigError(f"{key} is not set")
    sched, tensor, context = config.schedule, config.parallel.tensor, config.parallel.context
    if tensor < 1 or context < 1 or world % (tensor * context):
        raise ConfigError(f"{model_parallel_sizes(tensor, context)} must divide the number of processes ({world})")
    data_parallel = world // (tensor * context)
    if sched.global_batch % (sched.micro_batch * data_parallel):
        raise ConfigError(f"schedule.global_batch ({sched.global_batch}) must be a multiple of schedule.micro_batch "
                          f"({sched.micro_batch}) x data-parallel size ({data_parallel})")
    model = config.model_config()  # a config only: nothing is built or initialised here
    steps = sched.steps(model.seq_length)

    data_dir = config.data.dir
    if not os.path.isdir(data_dir):
        raise DataError(f"data.dir {data_dir}: no such directory (make the shards with data_prep/tokenize.py)")
    manifest = read_manifest(data_dir)
    vocab = manifest.tokenizer.vocab_size
    if vocab != model.vocab_size:
        raise DataError(f"{data_dir}: the tokenizer has {vocab} tokens, the model's vocab_size is {model.vocab_size}; "
                        f"set model.overrides.vocab_size={vocab} or use shards made with the model's tokenizer")
    train = ShardStream(data_dir, "train", 0, data_parallel, sched.micro_batch, config.data.seed, model.seq_length,
                        manifest, global_batch=sched.global_batch)
    if config.eval.interval:
        ShardStream(data_dir, "val", 0, 1, sched.micro_batch, config.data.seed, model.seq_length, manifest)

    _writable(config.checkpoint.dir)
    latest = ckpt.latest_dir(config.checkpoint.dir)
    resume = "a fresh run"
    if latest:
        saved = ckpt.read_state(latest)
        diff = ckpt.model_differences(saved.config["model"], config.as_dict()["model"])
        if diff:
            raise ckpt.CheckpointError(f"{latest} holds a different model; refusing to resume from it:\n  "
                                       + "\n  ".join(diff))
        if not all(isinstance(d, dict) and "consumed" in d for d in saved.data):
            raise DataError(f"{latest}: its data position was saved by the per-rank sample order of an earlier "
                            "version, which cannot be continued exactly; start a new checkpoint.dir with "
                            f"checkpoint.init_from={latest} (its weights; its optimizer state with "
                            "checkpoint.init_optimizer=true)")
        resume = f"resuming from {latest} at step {saved.step}"

    tokens = sched.global_batch * model.seq_length
    samples = sum(s.samples for s in train.shards)
    lines = [f"model {config.model.preset} {config.model.variant}: {steps:,} steps x {tokens:,} tokens = "
             f"{steps * tokens / 1e9:.2f}B tokens; {world} process(es), tensor {tensor} x "
             + (f"context {context} x " if context > 1 else "") + f"data {data_parallel}",
             f"data {data_dir}: {len(train.shards)} train shards, {samples:,} windows of {model.seq_length} tokens "
             f"({samples * model.seq_length / 1e9:.2f}B tokens, {steps * tokens / max(1, samples * model.seq_length):.2f} "
             "epochs)",
             f"checkpoints {config.checkpoint.dir}: {resume}"]
    return Plan(model, steps, data_parallel, manifest, lines)
