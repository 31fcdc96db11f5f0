"""The worker pool that queries shards at the same time, and its rules.

A session's transaction is not thread-safe. So every shard's connection is
opened in the calling thread first; a worker thread only runs its own
connection's query, and looks that (already open) connection up in the
session's transaction under a lock. ORM rows are built later, in the
calling thread, when the results are merged.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import threading
import typing as t

_R = t.TypeVar("_R")


class WorkerPool:
    """A thread pool made on first use, shared by one application's sessions.

    :param workers: How many shards may be queried at the same time.

    .. versionadded:: 0.1.0
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The pool's executor, started on first use."""
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        self.workers, thread_name_prefix="partition-scatter"
                    )
        return self._executor

    def close(self) -> None:
        """Stop the threads; the next use starts new ones."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def run_all(self, calls: t.Sequence[t.Callable[[], _R]]) -> list[_R]:
        """Run every call, the first in this thread and the others in the
        pool, each in a copy of this thread's context (the routing plan).

        Waits for all of them, also when one raises; then raises the first
        error in call order.

        :param calls: Functions without arguments.
        :return: Their results, in call order.
        """
        executor = self.executor()
        futures = [
            executor.submit(contextvars.copy_context().run, call) for call in calls[1:]
        ]
        try:
            first = calls[0]()
        finally:
            concurrent.futures.wait(futures)
        return [first, *(future.result() for future in futures)]


class ConnectionLock:
    """Serialises the session's connection lookups while a scatter runs.

    Outside a scatter :meth:`held` is a no-op, so the common path pays one
    attribute check.
    """

    def __init__(self) -> None:
        self._lock: threading.Lock | None = None

    @contextlib.contextmanager
    def scatter(self) -> t.Iterator[None]:
        """Mark a scatter as running for the duration of the block."""
        self._lock = threading.Lock()
        try:
            yield
        finally:
            self._lock = None

    @property
    def active(self) -> threading.Lock | None:
        """The lock to take around a connection lookup, ``None`` outside a
        scatter.
        """
        return self._lock
