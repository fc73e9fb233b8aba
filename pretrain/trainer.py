"""The training loop, readable top to bottom: check the inputs, build, resume, then steps of gradient
accumulation, a guarded optimizer step, logging, evaluation and checkpoints, until the step budget or
a stop (pretrain/stopping.py).

One process, or many under torchrun / srun (pretrain/distributed.py): tensor parallelism (and sequence
parallelism) through the Megatron-core model, data parallelism through the optimizer path
(pretrain/optim.py: Megatron-core's DDP and distributed optimizer on GPU, torch's AdamW over averaged
gradients on CPU); gloo on CPU, NCCL on GPU.
"""

import math
import time
from typing import Callable, Optional

import torch

from titans_pretrain import checkpoint as ckpt
from titans_pretrain import distributed as dist_
from titans_pretrain import optim as optim_
from titans_pretrain import preflight
from titans_pretrain.config import TrainConfig
from titans_pretrain.data import ShardStream
from titans_pretrain.prefetch import Prefetcher
from titans_pretrain.device_peak import peak_tflops
from titans_pretrain.language_model import check_training_precision, language_model_loss, validation_loss
from titans_pretrain.schedule import learning_rate
from titans_pretrain.stopping import EXIT_REQUEUE, StopRule, StopSignals
from titans_pretrain.train_log import TrainLog
from titans_megatron import build_model
from titans_megatron.flops import matmul_parameters, training_flops_per_token

__all__ = ["EXIT_REQUEUE", "TrainingAborted", "train"]


class TrainingAborted(Exception):
    pass


class Checkpoints:
    """Saves at most once per step (a stop right after a periodic save does not write it again); with
    ``checkpoint.async_save``, one save at a time in the background."""

    def __init__(self, config: TrainConfig, layout, model, opt, data, step: int, say, bundle: ckpt.Bundle):
        self.config, self.layout, self.model, self.opt, self.data, self.say = config, layout, model, opt, data, say
        self.bundle = bundle
        self.saved_step = step  # the resumed checkpoint's step, or 0: nothing trained yet is not saved again
        self.pending: Optional[ckpt.PendingSave] = None

    def save(self, step: int, wait: bool = False) -> None:
        """Collective. ``wait``: the checkpoint is complete when this returns (a stop, the end)."""
        if step != self.saved_step:
            self.wait()  # one save in flight at a time
            # the position is global (samples consumed by all ranks): every rank holds the same one
            asynchronous = self.config.checkpoint.async_save and not wait
            saved = ckpt.save(self.config.checkpoint.dir, step, self.model, self.opt.checkpoint_state,
                              [self.data.state_dict()], self.config.as_dict(), self.layout,
                              self.config.checkpoint.keep, self.bundle, asynchronous=asynchronous)
            self.saved_step = step
            if asynchronous:
                self.pending = saved
            else:
                self.say(f"saved {saved}")
        if wait:
            self.wait()

    def poll(self) -> None:
        """Rank 0, after each step: a background save that has completed becomes ``latest``."""
        if self.pending is not None and self.layout.is_main and not self.pending.finished and self.pending.ready():
            self.pending.finish()
            self.say(f"saved {self.pending.final}")

    def wait(self) -> None:
        """Collective: the save in flight completes and becomes ``latest``."""
        if self.pending is not None:
            announced = self.pending.finished
            path = self.pending.wait()
            self.pending = None
            if not announced:
                self.say(f"saved {path}")


def train(config: TrainConfig, log: Callable[[str], None] = print) -> int:
    """Returns the process exit status: 0 when the step budget is reached, EXIT_REQUEUE after a stop
    (saved), and raises TrainingAborted after too many non-finite steps. Every rank runs it; rank 0
    logs and writes the shared files."""
    started = time.time()
    signals = StopSignals()
    layout = dist_.init_distributed(config.parallel.tensor, config.parallel.context)
    say = log if layout.is_main else (lambda line: None)
    plan = preflight.check(config, layout.world)
    for line in plan.lines:
        say(line)
    check_training_precision(config.run.precision, layout.device)
    bundle = ckpt.Bundle.of(plan.manifest, config.data.dir)  # the tokenizer every checkpoint will carry
    sched, optim_cfg, model_config = config.schedule, config.optim, plan.model_config

    model = build_model(model_config, seed=config.run.seed).to(layout.device)
    opt = optim_.build(model, model_config, optim_cfg, layout)
    data = ShardStream(config.data.dir, "train", layout.dp_rank, layout.data, sched.micro_batch, config.data.seed,
                       model_config.seq_length, plan.manifest, global_batch=sched.global_batch)
    step = 0
    latest = ckpt.latest_dir(config.checkpoint.dir)
    if latest:
        state = ckpt.load(latest, model, opt.checkpoint_state, config.as_dict(), layout)
        data.load_state_dict(state.data[0])  # one global position, whatever the data-parallel size
        step = state.step
        say(f"resumed from {latest} at step {step}")
    elif config.checkpoint.init_from:
        source = ckpt.init_from(config.checkpoint.init_from, model,
                                opt.checkpoint_state if config.checkpoint.init_optimizer else None)
        say(f"initialised from {source.folder} (step {source.step} of its run"
            f"{', with its optimizer state' if config.checkpoint.init_optimizer else ''}); this run starts at step 0")
    data = Prefetcher(data, config.data.prefetch)  # the position it saves is that of the batches taken
    checkpoints = Checkpoints(config, layout, model, opt, data, step, say, bundle)
    stops = StopRule(config.run, plan.train_steps, signals, started, layout)

    accumulation = sched.global_batch // (sched.micro_batch * layout.data)
    tokens_per_step = sched.global_batch * model_config.seq_length
    metrics = TrainLog(config, plan.train_steps, tokens_per_step,
                       training_flops_per_token(model_config, matmul_parameters(model)),
                       peak_tflops(layout.device, config.log.peak_tflops), layout.world, layout.is_main, say,
                       validate=lambda: validation_loss(model, config.data.dir, sched.micro_batch, config.data.seed,
                                                        model_config.seq_length, config.eval.batches,
                                                        config.run.precision))
    context = f"context {layout.context} x " if layout.context > 1 else ""
    say(f"{layout.world} process(es): tensor {layout.tensor} x {context}data {layout.data}; {accumulation} micro-batches "
        f"of {sched.micro_batch} per step and rank; {plan.train_steps} steps of {tokens_per_step:,} tokens; "
        f"{optim_.implementation(optim_cfg, layout.device)} optimizer")

    def stop_here(why: str) -> int:
        metrics.close()
        checkpoints.save(step, wait=True)
        if layout.is_main:
            ckpt.write_stop_marker(config.checkpoint.dir, step, why)
        say(f"stopping at step {step} ({why}); exit status {EXIT_REQUEUE} asks to be requeued")
        return EXIT_REQUEUE

    why = stops.reason()  # stopped while starting: no step to finish
    if why:
        return stop_here(why)

    bad_in_a_row, skipped = 0, 0
    batches = iter(data)
    model.train()
    while step < plan.train_steps:
        lr = learning_rate(step, optim_cfg, plan.train_steps)
        opt.set_lr(lr)
        opt.zero_grad()
        loss_sum = torch.zeros((), dtype=torch.float64, device=layout.device)  # read once per step
        for micro in range(accumulation):
            with opt.micro_batch(last=micro == accumulation - 1):
                loss = language_model_loss(opt.model, next(batches), config.run.precision)
                (loss / accumulation).backward()
            loss_sum += loss.detach().double() / accumulation
        grad_norm = opt.reduce_gradients()
        loss_mean = dist_.mean_over_data_parallel(loss_sum, layout)
        step += 1  # a skipped step's batches are consumed too, so a resume sees the same data
        if math.isfinite(loss_mean) and math.isfinite(grad_norm):
            bad_in_a_row = 0
            opt.step(grad_norm)
            metrics.step(step, loss_mean, lr, grad_norm, skipped)
        else:
            bad_in_a_row, skipped = bad_in_a_row + 1, skipped + 1
            say(f"step {step}: non-finite loss {loss_mean} / grad norm {grad_norm}: skipped ({bad_in_a_row} in a row)")
            if bad_in_a_row >= config.run.max_bad_steps:
                checkpoints.wait()  # a good state still being written is kept
                last = ckpt.latest_dir(config.checkpoint.dir)
                raise TrainingAborted(f"{bad_in_a_row} non-finite steps in a row (run.max_bad_steps); "
                                      + (f"the last good checkpoint is intact: {last}" if last
                                         else "no checkpoint had been written"))
        why = stops.reason(step)
        if why:
            return stop_here(why)
        # Not inside a run of skipped steps: rotating checkpoints then could delete the last good ones.
        if config.checkpoint.interval and step % config.checkpoint.interval == 0 and step < plan.train_steps \
                and not bad_in_a_row:
            checkpoints.save(step)
        checkpoints.poll()
    checkpoints.save(step, wait=True)
    metrics.close()
    return 0
