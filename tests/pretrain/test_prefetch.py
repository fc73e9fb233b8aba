"""titans_pretrain.prefetch: batches read ahead in a thread are the stream's own, in order; the position saved
is that of the batches taken, not of those read ahead; reading errors reach the step; the reader stops."""

import itertools
import threading
import time

import pytest

from titans_pretrain.prefetch import Prefetcher


class Counting:
    """A stream of numbered batches whose position moves as each is made (as ShardStream's does)."""

    def __init__(self, fail_at=None, delay=0.0):
        self.consumed, self.fail_at, self.delay, self.made = 0, fail_at, delay, 0

    def state_dict(self):
        return {"consumed": self.consumed}

    def __iter__(self):
        while True:
            if self.consumed == self.fail_at:
                raise ValueError(f"shard {self.consumed}: unreadable")
            time.sleep(self.delay)
            self.consumed += 1
            self.made += 1
            yield {"n": self.consumed}


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_batches_and_positions_are_those_taken(depth):
    stream = Counting()
    ahead = Prefetcher(stream, depth)
    taken = []
    for batch in itertools.islice(ahead, 10):
        taken.append((batch["n"], ahead.state_dict()["consumed"]))
    assert taken == [(n, n) for n in range(1, 11)]
    assert ahead.state_dict() == {"consumed": 10}


def test_it_reads_ahead_while_the_step_runs():
    stream = Counting()
    ahead = iter(Prefetcher(stream, 3))
    next(ahead)
    deadline = time.time() + 5
    # the one taken, three queued, and one made that waits for room: no further
    while stream.made < 5 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert stream.made == 5


def test_a_reading_error_reaches_the_step_that_needs_the_batch():
    ahead = Prefetcher(Counting(fail_at=3), 4)
    got = []
    with pytest.raises(ValueError, match="shard 3: unreadable"):
        for batch in ahead:
            got.append(batch["n"])
    assert got == [1, 2, 3]


def test_the_reader_stops_when_the_steps_do():
    before = threading.active_count()
    ahead = Prefetcher(Counting(delay=0.01), 2)
    batches = iter(ahead)
    next(batches)
    batches.close()  # what happens when the training loop returns
    assert ahead._thread is None and threading.active_count() == before
