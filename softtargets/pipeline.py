"""Overlap helpers: run a producer or a consumer in a background thread behind a bounded queue.

Used by both stages: stage 2 decodes chunks ahead of the training step (`prefetch`), stage 1
casts, compresses and writes chunks behind the teacher's forward pass (`BackgroundWorker`).
numcodecs (zstd, blosc) and numpy's large copies release the GIL, so the thread really overlaps.
Exceptions raised in the thread are re-raised in the caller; nothing is silently dropped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    """An exception raised in the background thread, carried to the caller."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterable[T], *, depth: int, name: str = "prefetch") -> Iterator[T]:
    """Iterate `items` in a background thread, at most `depth` items ahead of the caller.

    depth <= 0 iterates in the caller's thread. Closing the generator early stops the thread.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - carried to the caller and re-raised there
            put(_Failure(e))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            obj = q.get()
            if obj is _DONE:
                return
            if isinstance(obj, _Failure):
                raise obj.error
            yield obj  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5.0)


class BackgroundWorker(Generic[T]):
    """Calls `fn(item)` for every submitted item in one background thread, in submission order.

    The queue holds at most `depth` items, so a slow consumer slows the producer instead of
    growing memory. The first exception in `fn` is re-raised by the next `submit` or by `close`;
    later items are then dropped, never processed after a failure.
    """

    def __init__(self, fn: Callable[[T], None], *, depth: int, name: str = "writer") -> None:
        self._fn = fn
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue  # drain without processing after a failure
            try:
                self._fn(item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the submitting thread
                self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, item: T) -> None:
        """Queue `item`; blocks while the queue is full; raises the thread's first error."""
        self._raise()
        while True:
            try:
                self._q.put(item, timeout=0.1)
                break
            except queue.Full:
                self._raise()
                if not self._thread.is_alive():
                    raise RuntimeError("background worker thread died")

    def close(self) -> None:
        """Wait until every queued item is processed; raises the thread's first error."""
        self._q.put(_DONE)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop after the item in progress, dropping the rest; never raises."""
        if self._error is None:
            self._error = RuntimeError("aborted")
        self._q.put(_DONE)
        self._thread.join()
