"""Reading ahead: a ShardStream's batches made in a background thread while the steps run.

Reading a shard (a tar of thousands of samples) and stacking a batch is I/O and numpy work that
releases the GIL, so one thread keeps ``depth`` micro-batches ready and a step takes them without
waiting. A thread, not a torch DataLoader worker process: the stream is one sequential reader whose
position must be known exactly, and a process would copy every batch once more. The position a
checkpoint saves is that of the batches handed out, not of those read ahead, so a resume is exact.
"""

import queue
import threading
from typing import Dict, Iterator

import torch

_DONE = object()


class Prefetcher:
    """``iter(stream)`` read ahead by ``depth`` batches; ``state_dict`` is the stream's position after the
    last batch handed out. A reading error is raised where the batch would have been taken."""

    def __init__(self, stream, depth: int):
        self.stream, self.depth = stream, depth
        self._state = stream.state_dict()
        self._queue, self._stop, self._thread = None, threading.Event(), None

    def state_dict(self) -> Dict[str, int]:
        return dict(self._state)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        if self.depth == 0:
            for batch in self.stream:
                self._state = self.stream.state_dict()
                yield batch
            return
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._read, name="prefetch", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is _DONE:
                    return
                batch, self._state = item
                yield batch
        finally:
            self.close()

    def _read(self) -> None:
        try:
            for batch in self.stream:
                if not self._put((batch, self.stream.state_dict())):
                    return
        except BaseException as e:  # handed to the consumer, which raises it in the step
            self._put(e)
            return
        self._put(_DONE)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop the reader (it finishes the batch it is making)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
