"""Run an iterable on a background thread, up to `depth` items ahead of its consumer.

Why: decoding videos (PyAV / numpy release the GIL) then overlaps with the model's forward pass. The
producer's exceptions are re-raised in the consumer, and a consumer that stops early never leaves the
producer thread blocked on a full queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    """An exception raised by the producer, carried to the consumer (never confused with an item)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(out: queue.Queue, item: object, stop: threading.Event) -> None:
    while not stop.is_set():  # a consumer that stopped early must not leave this thread blocked forever
        try:
            out.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


def _produce(items: Iterable[T], out: queue.Queue, stop: threading.Event) -> None:
    try:
        iterator = iter(items)  # a generator's body runs here, on the producer thread
        while not stop.is_set():  # checked before each item: no work is done for a consumer that left
            try:
                item = next(iterator)
            except StopIteration:
                _put(out, _DONE, stop)
                return
            _put(out, item, stop)
    except BaseException as exc:  # surface every producer failure in the consumer thread
        _put(out, _Failure(exc), stop)


def prefetch(items: Iterable[T], depth: int, *, name: str = "prefetch") -> Iterator[T]:
    """Yield the items of `items`, produced on a daemon thread at most `depth` (>= 1) items ahead.

    Closing the returned generator (leaving the loop, or an exception in the consumer) stops the producer
    before its next item and joins it.
    """
    out: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    worker = threading.Thread(target=_produce, args=(items, out, stop), name=name, daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join(timeout=10)
