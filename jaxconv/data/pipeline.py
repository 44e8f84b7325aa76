"""The batch pipeline: batch order is a pure function of (seed, step).

No iterator state is ever saved: resuming at step ``s`` rebuilds exactly the batches an
uninterrupted run would have seen. Each host takes its own contiguous slice of every global
batch; a background thread stages the next batches on the devices while the current step runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from jaxconv.data.sources import Split

Batch = dict[str, np.ndarray]


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Global example indices of training batch ``step``: epoch-wise shuffles, remainder dropped."""
    steps_per_epoch = num_examples // batch_size
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return order[position * batch_size:(position + 1) * batch_size]


def train_batches(data: Split, batch_size: int, seed: int, start_step: int,
                  process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """This host's slice of every global training batch from ``start_step`` on, forever."""
    local = batch_size // process_count
    step = start_step
    while True:
        idx = batch_indices(len(data), batch_size, seed, step)[process_index * local:(process_index + 1) * local]
        idx = np.sort(idx)  # sorted reads are faster on memory-mapped data; order within a batch is irrelevant
        yield {"images": take(data.images, idx), "labels": data.labels[idx], "mask": np.ones(local, np.float32)}
        step += 1


def eval_batches(data: Split, batch_size: int, process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """Every example exactly once; the last partial batch is padded (repeating its last example) and masked out.

    Each host reads only its own slice of every global batch.
    """
    local = batch_size // process_count
    sl = slice(process_index * local, (process_index + 1) * local)
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        mask = np.zeros(batch_size, np.float32)
        mask[:len(idx)] = 1.0
        idx = np.pad(idx, (0, batch_size - len(idx)), mode="edge")[sl]
        yield {"images": take(data.images, idx), "labels": data.labels[idx], "mask": mask[sl]}


def take(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``images[idx]`` as a plain in-memory array; on a memory map only the selected rows are read."""
    return np.asarray(images[idx])


class Prefetcher:
    """Runs ``put`` (host -> device transfer) in a background thread, ``size`` batches ahead.

    Iterate it for the staged batches; ``close()`` (or leaving a ``with`` block) stops the thread and
    joins it. A thread still inside a device transfer when the interpreter shuts down aborts the
    process (exit 134), so the owner must close it before returning.
    """

    def __init__(self, batches: Iterator[Batch], put: Callable[[Batch], Any], size: int = 2):
        self._slots: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(batches, put), name="jaxconv-prefetch")
        self._thread.start()

    def _work(self, batches: Iterator[Batch], put: Callable[[Batch], Any]) -> None:
        try:
            for batch in batches:
                if not self._offer(put(batch)):
                    return
            self._offer(StopIteration())
        except BaseException as e:  # surfaced in the consumer, not lost in the thread
            self._offer(e)

    def _offer(self, item: Any) -> bool:
        """Queues ``item`` unless the consumer has closed; False once closed."""
        while not self._stop.is_set():
            try:
                self._slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        item = self._slots.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        while not self._slots.empty():  # staged device buffers go now, not at interpreter exit
            self._slots.get_nowait()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
