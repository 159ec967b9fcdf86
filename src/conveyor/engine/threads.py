"""The threads that sync handlers run in.

A pool of daemon threads that never makes a call wait: each call goes to an idle thread,
or to a new one when none is idle. The worker holds a job's slot until its thread returns,
so the pool grows no larger than the worker's concurrency (plus threads still running
after their job's lease was lost). Daemon threads, because a handler's thread cannot be
interrupted: ``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter
exit, so one hung handler would keep the process from ever exiting.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Call = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class JobThreads(Executor):
    """Runs each submitted call at once in a daemon thread."""

    def __init__(self, name: str = "conveyor-job") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._idle = 0
        """Threads waiting for a call that no submitted call has been counted against."""
        self._started = 0
        self._closed = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker's job threads are shut down: no job can start")
            grow = self._idle == 0
            if grow:
                self._started += 1
                number = self._started
            else:
                self._idle -= 1
        self._calls.put((future, fn, args, kwargs))
        if grow:
            thread = threading.Thread(target=self._serve, name=f"{self._name}-{number}")
            thread.daemon = True
            thread.start()
        return future

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            future, fn, args, kwargs = call
            del call
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, args, kwargs
            with self._lock:
                if self._closed:
                    return
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let idle threads end; threads still running a call end when it returns. Never
        waits for them (``wait`` is ignored): a handler may never return."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._calls.put(None)
