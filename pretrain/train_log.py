"""What a run reports: a console line every ``log.interval`` steps (progress, tokens/s, ETA), and every
step's record (loss, learning rate, gradient norm, skipped steps; tokens/s, MFU and memory at the
interval; validation loss at ``eval.interval``) in TensorBoard and ``metrics.jsonl``, both in
``log.dir`` (default ``CHECKPOINT_DIR/tensorboard``). Rank 0 writes; every rank calls it (validation
runs on every rank of a tensor-parallel model)."""

import json
import math
import os
import time
from typing import Callable, Optional

import torch


class TrainLog:
    def __init__(self, config, train_steps: int, tokens_per_step: int, flops_per_token: float,
                 peak_tflops: Optional[float], world: int, is_main: bool, say: Callable[[str], None],
                 validate: Callable[[], float]):
        self.config, self.train_steps, self.tokens_per_step = config, train_steps, tokens_per_step
        self.flops_per_token, self.peak_tflops, self.world = flops_per_token, peak_tflops, world
        self.say, self.validate = say, validate
        log_dir = config.log.dir or os.path.join(config.checkpoint.dir, "tensorboard")
        self.metrics_path = os.path.join(log_dir, "metrics.jsonl")
        self.writer = None
        if is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir)
        self.window_start, self.window_tokens = time.time(), 0

    def step(self, step: int, loss: float, lr: float, grad_norm: float, skipped: int) -> None:
        """After an optimizer step that was taken (skipped steps are reported by the loop)."""
        self.window_tokens += self.tokens_per_step
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "skipped_steps": skipped}
        if step % self.config.log.interval == 0 or step == self.train_steps:
            record.update(self._throughput(step, loss, lr, grad_norm))
        if self.config.eval.interval and step % self.config.eval.interval == 0:
            record["val_loss"] = self.validate()
            self.say(f"step {step}: val loss {record['val_loss']:.4f} (perplexity {math.exp(record['val_loss']):.2f})")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and value is not None:
                    self.writer.add_scalar(f"train/{key}" if key != "val_loss" else "val/loss", value, step)
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _throughput(self, step, loss, lr, grad_norm) -> dict:
        tps = self.window_tokens / max(time.time() - self.window_start, 1e-9)
        mfu = self.flops_per_token * tps / (self.world * self.peak_tflops * 1e12) if self.peak_tflops else None
        memory = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _rss_bytes()
        eta = (self.train_steps - step) * self.tokens_per_step / max(tps, 1e-9)
        self.say(f"step {step}/{self.train_steps} | loss {loss:.4f} | lr {lr:.2e} | grad {grad_norm:.3f} | "
                 f"{tps:,.0f} tok/s | ETA {eta / 60:.1f} min")
        self.window_start, self.window_tokens = time.time(), 0
        return {"tokens_per_s": tps, "mfu": mfu, "memory_mib": memory / 2**20}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
