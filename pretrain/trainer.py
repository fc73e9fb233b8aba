"""The training loop, readable top to bottom: build, resume, then steps of gradient accumulation,
clipping, a guarded optimizer step, logging, evaluation and checkpoints, until the step budget, a
signal or the time limit.

One process, or many under torchrun / srun (pretrain/distributed.py): tensor parallelism (and sequence
parallelism) through the Megatron-core model, data parallelism through the optimizer path
(pretrain/optim.py: Megatron-core's DDP and distributed optimizer on GPU, torch's AdamW over averaged
gradients on CPU); gloo on CPU, NCCL on GPU.
"""

import json
import math
import os
import signal
import time
from typing import Callable, Optional

import torch

from pretrain import checkpoint as ckpt
from pretrain import distributed as dist_
from pretrain.config import ConfigError, TrainConfig
from pretrain import preflight
from pretrain.data import ShardStream
from pretrain.device_peak import peak_tflops
from pretrain import optim as optim_
from pretrain.schedule import learning_rate
from pretrain.preflight import model_config_of
from titans_megatron.flops import matmul_parameters, training_flops_per_token

# Exit status after a signal or the time limit once the checkpoint is saved: the SLURM launcher
# requeues the job on it.
EXIT_REQUEUE = 3


class TrainingAborted(Exception):
    pass


class _StopFlag:
    """Set by SIGTERM / SIGUSR1; the loop finishes its step, saves and exits."""

    def __init__(self):
        self.signal: Optional[int] = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum


def build(config: TrainConfig):
    from titans_megatron import build_model

    model_config = model_config_of(config)
    model = build_model(model_config, seed=config.run.seed)
    return model_config, model


def autocast(precision: str, device: torch.device):
    """bf16 autocast (run.precision bf16, or auto on CUDA); weights and optimizer state stay fp32."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def check_training_precision(precision: str, device: torch.device) -> None:
    """bf16 training needs CUDA: Megatron-core's linears replay the forward's autocast in their backward
    (custom_bwd) for CUDA only, so on CPU their backward would meet bf16 gradients with fp32 weights."""
    if precision == "bf16" and device.type != "cuda":
        raise ConfigError(f"run.precision bf16 trains on CUDA only (this process has device {device.type}); "
                          "use fp32 or auto (fp32 on CPU)")


def language_model_loss(model, batch, precision: str = "fp32") -> torch.Tensor:
    """Mean next-token cross-entropy over the unmasked targets of a batch (on the model's device)."""
    device = next(model.parameters()).device
    tokens = batch["tokens"].to(device, non_blocking=True)
    with autocast(precision, device):
        losses = model(tokens[:, :-1], labels=tokens[:, 1:])  # fp32, vocab-parallel: no gathered logits
    mask = batch["loss_mask"].to(device)
    return (losses * mask).sum() / mask.sum().clamp_min(1.0)


@torch.no_grad()
def evaluate(model, data_dir: str, micro_batch: int, seed: int, seq_length: int, batches: Optional[int],
             precision: str = "fp32") -> float:
    """Mean loss over the first ``batches`` batches of the val split (the same batches every time;
    None: one pass over the whole split)."""
    stream = ShardStream(data_dir, "val", 0, 1, micro_batch, seed, seq_length)
    if batches is None:
        batches = max(1, sum(s["samples"] for s in stream.shards) // micro_batch)
    model.eval()
    losses = [language_model_loss(model, batch, precision).item() for batch, _ in zip(stream, range(batches))]
    model.train()
    return sum(losses) / len(losses)


def train(config: TrainConfig, log: Callable[[str], None] = print) -> int:
    """Returns the process exit status: 0 when the step budget is reached, EXIT_REQUEUE after a signal
    or the time limit (saved), and raises TrainingAborted after too many non-finite steps. Every rank
    runs it; rank 0 logs and writes the shared files."""
    started = time.time()
    stop = _StopFlag()  # from the start: a preemption while the model builds or a checkpoint loads counts too
    sched, optim_cfg = config.schedule, config.optim
    layout = dist_.init_distributed(config.parallel.tensor)
    say = log if layout.is_main else (lambda line: None)
    for line in preflight.check(config, layout.world):
        say(line)
    check_training_precision(config.run.precision, layout.device)
    model_config, model = build(config)
    train_steps = sched.steps(model_config.seq_length)
    model.to(layout.device)
    opt = optim_.build(model, model_config, optim_cfg, layout)
    data = ShardStream(config.data.dir, "train", layout.dp_rank, layout.data, sched.micro_batch, config.data.seed,
                       model_config.seq_length)
    config_dict = config.as_dict()

    step = 0
    latest = ckpt.latest_dir(config.checkpoint.dir) if config.checkpoint.dir else None
    if latest:
        state = ckpt.load(latest, model, opt.checkpoint_state, config_dict, layout)
        data.load_state_dict(state["data"][min(layout.dp_rank, len(state["data"]) - 1)])  # refuses another DP size
        step = state["step"]
        say(f"resumed from {latest} at step {step}")
    log_dir = config.log.dir or os.path.join(config.checkpoint.dir, "tensorboard")
    writer = None
    if layout.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir)
    metrics_path = os.path.join(log_dir, "metrics.jsonl")
    accumulation = sched.global_batch // (sched.micro_batch * layout.data)
    tokens_per_step = sched.global_batch * model_config.seq_length
    flops_per_token = training_flops_per_token(model_config, matmul_parameters(model))
    peak = peak_tflops(layout.device, config.log.peak_tflops)
    say(f"{layout.world} process(es): tensor {layout.tensor} x data {layout.data}; {accumulation} micro-batches "
        f"of {sched.micro_batch} per step and rank; {train_steps} steps of {tokens_per_step:,} tokens; "
        f"{optim_.implementation(optim_cfg, layout.device)} optimizer")

    saved_step = step  # the resumed checkpoint's step, or 0: nothing trained yet is not saved again

    def save():
        nonlocal saved_step
        if config.checkpoint.dir and step != saved_step:
            by_dp = dict(dist_.gather_objects((layout.dp_rank, data.state_dict()), layout))
            data_states = [by_dp[r] for r in range(layout.data)]
            path = ckpt.save(config.checkpoint.dir, step, model, opt.checkpoint_state, data_states, config_dict, layout,
                             config.checkpoint.keep)
            saved_step = step
            say(f"saved {path}")

    def requeue(why: str) -> int:
        if writer is not None:
            writer.close()
        save()
        if layout.is_main and config.checkpoint.dir:
            ckpt.write_stop_marker(config.checkpoint.dir, step, why)
        say(f"stopping at step {step} ({why}); exit status {EXIT_REQUEUE} asks to be requeued")
        return EXIT_REQUEUE

    def stop_reason(timed_out: bool = False, scheduled: bool = False) -> str:
        if stop.signal is not None:
            return f"signal {signal.Signals(stop.signal).name}"
        return "run.max_minutes" if timed_out else "run.stop_at_step" if scheduled else "another rank"

    if dist_.any_rank(stop.signal is not None, layout):  # stopped while starting: no step to finish
        return requeue(stop_reason())

    bad_in_a_row, skipped, window_start, window_tokens = 0, 0, time.time(), 0

    def log_step(step, loss, lr, grad_norm):
        """Console line every log.interval steps; metrics.jsonl and TensorBoard every step; validation."""
        nonlocal window_start, window_tokens
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "skipped_steps": skipped}
        if step % config.log.interval == 0 or step == train_steps:
            elapsed = time.time() - window_start
            tps = window_tokens / max(elapsed, 1e-9)
            record["tokens_per_s"] = tps
            record["mfu"] = flops_per_token * tps / (layout.world * peak * 1e12) if peak else None
            record["memory_mib"] = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
                                    else _rss_bytes()) / 2**20
            eta = (train_steps - step) * tokens_per_step / max(tps, 1e-9)
            say(f"step {step}/{train_steps} | loss {loss:.4f} | lr {lr:.2e} | grad {grad_norm:.3f} | "
                f"{tps:,.0f} tok/s | ETA {eta / 60:.1f} min")
            window_start, window_tokens = time.time(), 0
        if config.eval.interval and step % config.eval.interval == 0:
            val = evaluate(model, config.data.dir, sched.micro_batch, config.data.seed, model_config.seq_length,
                           config.eval.batches, config.run.precision)
            record["val_loss"] = val
            say(f"step {step}: val loss {val:.4f} (perplexity {math.exp(val):.2f})")
        if writer is not None:
            for key, value in record.items():
                if key != "step" and value is not None:
                    writer.add_scalar(f"train/{key}" if key != "val_loss" else "val/loss", value, step)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    batches = iter(data)
    model.train()
    while step < train_steps:
        lr = learning_rate(step, optim_cfg, train_steps)
        opt.set_lr(lr)
        opt.zero_grad()
        loss_sum = torch.zeros((), dtype=torch.float64, device=layout.device)  # read once per step, not per micro-batch
        for micro in range(accumulation):
            with opt.micro_batch(last=micro == accumulation - 1):
                loss = language_model_loss(opt.model, next(batches), config.run.precision)
                (loss / accumulation).backward()
            loss_sum += loss.detach().double() / accumulation
        grad_norm = opt.reduce_gradients()
        loss_sum = dist_.mean_over_data_parallel(loss_sum, layout)
        step += 1  # a skipped step's batches are consumed too, so a resume sees the same data
        if math.isfinite(loss_sum) and math.isfinite(grad_norm):
            bad_in_a_row = 0
            opt.step(grad_norm)
            window_tokens += tokens_per_step
            log_step(step, loss_sum, lr, grad_norm)
        else:
            bad_in_a_row, skipped = bad_in_a_row + 1, skipped + 1
            say(f"step {step}: non-finite loss {loss_sum} / grad norm {grad_norm}: skipped ({bad_in_a_row} in a row)")
            if bad_in_a_row >= config.run.max_bad_steps:
                last = ckpt.latest_dir(config.checkpoint.dir) if config.checkpoint.dir else None
                raise TrainingAborted(f"{bad_in_a_row} non-finite steps in a row (run.max_bad_steps); "
                                      + (f"the last good checkpoint is intact: {last}" if last
                                         else "no checkpoint had been written"))

        timed_out = config.run.max_minutes is not None and time.time() - started > 60 * config.run.max_minutes
        scheduled = config.run.stop_at_step == step and step < train_steps
        if dist_.any_rank(stop.signal is not None or timed_out or scheduled, layout):
            return requeue(stop_reason(timed_out, scheduled))
        # Not inside a run of skipped steps: rotating checkpoints then could delete the last good ones.
        if config.checkpoint.interval and step % config.checkpoint.interval == 0 and step < train_steps \
                and not bad_in_a_row:
            save()
    save()
    if writer is not None:
        writer.close()
    return 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
