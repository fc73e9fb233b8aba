"""When a run stops early: a signal (SIGTERM / SIGUSR1, what SLURM sends before preemption or the time
limit), ``run.max_minutes``, or ``run.stop_at_step``. Every rank asks at the same point of every step
and all stop together, at the same step."""

import signal
import time
from typing import Optional

from titans_pretrain import distributed as dist_
from titans_pretrain.config import RunSection

# Exit status after a stop once the checkpoint is saved: the SLURM launcher requeues the job on it.
EXIT_REQUEUE = 3


class StopSignals:
    """Installed at the very start, so a preemption while the model builds or a checkpoint loads counts."""

    def __init__(self):
        self.signal: Optional[int] = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum


class StopRule:
    def __init__(self, run: RunSection, train_steps: int, signals: StopSignals, started: float, layout):
        self.run, self.train_steps, self.signals, self.started, self.layout = run, train_steps, signals, started, layout

    def reason(self, step: Optional[int] = None) -> Optional[str]:
        """Collective: why this rank or any other stops now (None: go on). ``step``: the step just
        finished (None while starting, where only a signal counts)."""
        mine = self._mine(step)
        if not dist_.any_rank(mine is not None, self.layout):
            return None
        return mine or "another rank"

    def _mine(self, step: Optional[int]) -> Optional[str]:
        if self.signals.signal is not None:
            return f"signal {signal.Signals(self.signals.signal).name}"
        if step is None:
            return None
        if self.run.max_minutes is not None and time.time() - self.started > 60 * self.run.max_minutes:
            return "run.max_minutes"
        if self.run.stop_at_step == step and step < self.train_steps:
            return "run.stop_at_step"
        return None
