"""The learning rate as a pure function of the step: linear warmup to the peak, cosine to min_lr."""

import math

import pytest

from titans_pretrain.config import OptimSection
from titans_pretrain.schedule import learning_rate


@pytest.mark.parametrize("warmup,steps", [(1, 10), (10, 100), (50, 51), (3, 1000)])
def test_warmup_then_cosine(warmup, steps):
    optim = OptimSection(lr=4e-4, min_lr=4e-5, warmup_steps=warmup)
    lrs = [learning_rate(s, optim, steps) for s in range(steps + 5)]
    assert lrs[0] == pytest.approx(optim.lr / warmup)
    assert all(b > a for a, b in zip(lrs[:warmup - 1], lrs[1:warmup]))  # rises through the warmup
    assert lrs[warmup - 1] == pytest.approx(optim.lr) and lrs[warmup] == pytest.approx(optim.lr)
    assert all(b <= a + 1e-15 for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # then never rises
    assert lrs[steps] == pytest.approx(optim.min_lr) and lrs[-1] == pytest.approx(optim.min_lr)  # and holds
    middle = warmup + (steps - warmup) // 2
    progress = (middle - warmup) / max(1, steps - warmup)
    expected = optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + math.cos(math.pi * progress))
    assert lrs[middle] == pytest.approx(expected)


def test_every_value_between_min_and_peak():
    optim = OptimSection(lr=1e-3, min_lr=1e-4, warmup_steps=20)
    for step in range(20, 300):
        assert optim.min_lr - 1e-15 <= learning_rate(step, optim, 250) <= optim.lr + 1e-15
