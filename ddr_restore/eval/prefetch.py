"""Overlap file I/O with inference: an ordered read-ahead over a list (:class:`Prefetcher`) and background writes
(:class:`BackgroundWriter`), both on threads.

Threads, not worker processes: decoding and encoding PNGs (OpenCV) and the numpy work around them release the GIL,
and a thread shares the run's objects (options, paths) without pickling them. ``workers=0`` runs everything in the
calling thread, in order: the sequential path, identical in results and errors.

Errors: an exception raised by the function in a worker thread is re-raised, as the same object, in the calling
thread when its item is reached -- after every earlier item has been handed out, exactly where the sequential
loop would have raised it -- so a bad file's :class:`~ddr_restore.errors.InputError` names the file as before.
Leaving early (an error, Ctrl-C) cancels what has not started; what is running finishes on its own (one item).
Memory stays bounded: at most ``depth`` items are read ahead, at most ``max_pending`` writes wait.
"""
from __future__ import annotations

import itertools
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Deque, Generic, Iterable, Iterator, List, Optional, TypeVar

__all__ = ["default_workers", "check_workers", "Prefetcher", "BackgroundWriter"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """The default number of read-ahead threads: ``min(4, CPU count)``.

    Four threads decode about four 1280x720 pairs per 100 ms (about 50 ms per PNG on one core), ahead of a GPU
    that restores one in 30 ms; more would only take cores from the metrics running in the main thread.
    """
    return max(1, min(4, os.cpu_count() or 1))


def check_workers(workers: Optional[int], what: str = "workers") -> int:
    """``workers`` as an int >= 0 (``None``: :func:`default_workers`); raises InputError otherwise."""
    from ddr_restore.errors import InputError

    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"{what} must be an integer >= 0 (0: read in the main thread), got {workers!r}")
    return workers


class Prefetcher(Generic[T, R]):
    """``fn(item)`` for every item, computed up to ``depth`` items ahead on ``workers`` threads, yielded in order.

    Use as a context manager so that leaving the loop early cancels the read-ahead::

        with Prefetcher(read_pair, items, workers=2) as pairs:
            for item, pair in pairs:
                ...

    Yields ``(item, fn(item))``. With ``workers=0`` ``fn`` runs in the calling thread when the item is reached.
    """

    def __init__(self, fn: Callable[[T], R], items: Iterable[T], workers: int, depth: Optional[int] = None,
                 name: str = "ddr-read") -> None:
        self.fn = fn
        self.items = iter(items)
        self.workers = int(workers)
        self.depth = max(1, int(depth) if depth is not None else 2 * self.workers)
        self._pool: Optional[ThreadPoolExecutor] = (
            ThreadPoolExecutor(self.workers, thread_name_prefix=name) if self.workers > 0 else None)
        self._pending: Deque[Any] = deque()

    def __enter__(self) -> "Prefetcher[T, R]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _submit(self, n: int) -> None:
        assert self._pool is not None
        for item in itertools.islice(self.items, n):
            self._pending.append((item, self._pool.submit(self.fn, item)))

    def __iter__(self) -> Iterator[Any]:
        if self._pool is None:
            for item in self.items:
                yield item, self.fn(item)
            return
        self._submit(self.depth)
        while self._pending:
            item, future = self._pending.popleft()
            self._submit(1)  # keep `depth` in flight while the caller works on this one
            yield item, future.result()  # re-raises the worker's exception (its message names the file)

    def close(self) -> None:
        """Cancel the read-ahead that has not started; do not wait for the running reads (each is one item)."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class BackgroundWriter:
    """Run write calls (``submit(fn, *args)``) on one background thread, at most ``max_pending`` waiting.

    ``enabled=False`` runs each call at once in the calling thread (the sequential path). An exception raised by
    a write is re-raised in the calling thread by the next :meth:`submit` or by :meth:`finish`. Use as a context
    manager: a normal exit waits for every write (:meth:`finish`); an exit by an exception cancels the writes
    that have not started.
    """

    def __init__(self, enabled: bool = True, max_pending: int = 4, name: str = "ddr-write") -> None:
        self.max_pending = max(1, int(max_pending))
        self._pool: Optional[ThreadPoolExecutor] = (
            ThreadPoolExecutor(1, thread_name_prefix=name) if enabled else None)
        self._pending: Deque[Future] = deque()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    def _reap(self, keep: int) -> None:
        """Wait until at most ``keep`` writes are pending; re-raise the first failure."""
        while len(self._pending) > keep or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Write now (disabled) or in the background (enabled; waits while ``max_pending`` writes are queued)."""
        if self._pool is None:
            fn(*args)
            return
        self._reap(self.max_pending - 1)
        self._pending.append(self._pool.submit(fn, *args))

    def finish(self) -> None:
        """Wait for every write; re-raise the first failure."""
        try:
            self._reap(0)
        finally:
            self.abort()

    def abort(self) -> None:
        """Cancel the writes that have not started; do not wait for the one running."""
        pending: List[Future] = list(self._pending)
        self._pending.clear()
        for future in pending:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
