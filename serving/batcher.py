"""Dynamic micro-batching: concurrent requests are grouped into one model call in a worker thread.

A batch takes every request already queued; while requests arrive together (the previous batch merged
several), it also waits at most `max_wait_ms` for more, and closes early once it holds `max_batch` items. A lone
request (the previous batch held one request) is not held back: under concurrent load requests queue up while
the worker is busy anyway, so the wait only pays when they arrive together. A request's items are never split
across batches. Callers in the event loop `await batcher.submit(items)`;
the loop never blocks on the model. One worker thread runs all model work, so on 2 cores the model uses
both cores for one batch instead of several requests fighting over them (see XINFANG_THREADS).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Job(Generic[T, R]):
    kind: str
    items: list[T]
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """One worker thread; jobs of several kinds (e.g. "classify", "create"), each kind with its own function.

    `handlers[kind](items) -> results` receives the concatenated items of all jobs of that kind in a batch and
    must return one result per item, in order. An exception fails every job of that batch.
    """

    def __init__(self, handlers: dict[str, Callable[[list[Any]], list[Any]]], max_batch: int = 32,
                 max_wait_ms: float = 4.0, on_batch: Callable[[str, int, float], None] | None = None,
                 name: str = "xinfang-batcher") -> None:
        self.handlers = handlers
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: dict[str, list[_Job]] = {}
        self._stopped = threading.Event()
        self._together = True  # the previous batch merged several requests: wait for more
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit_future(self, kind: str, items: list[Any]) -> Future:
        if kind not in self.handlers:
            raise KeyError(kind)
        if self._stopped.is_set():
            raise RuntimeError("batcher is stopped")
        job = _Job(kind, list(items))
        self._queue.put(job)
        return job.future

    async def submit(self, kind: str, items: list[Any]) -> list[Any]:
        """Queue items and await their results without blocking the event loop."""
        return await asyncio.wrap_future(self.submit_future(kind, items))

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued jobs, then stop the worker."""
        self._stopped.set()
        self._queue.put(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                self._drain_and_fail()
                return
            jobs, count = [job], len(job.items)
            deadline = time.perf_counter() + self.max_wait
            stop = False
            while count < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()  # whatever is queued already
                except queue.Empty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0 or not (self._together or len(jobs) > 1):
                        break
                    try:
                        nxt = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                count += len(nxt.items)
            self._together = len(jobs) > 1
            self._process(jobs)
            if stop:
                self._drain_and_fail()
                return

    def _drain_and_fail(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._process([job])

    def _process(self, jobs: list[_Job]) -> None:
        by_kind: dict[str, list[_Job]] = {}
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                by_kind.setdefault(job.kind, []).append(job)
        for kind, group in by_kind.items():
            items = [it for job in group for it in job.items]
            t0 = time.perf_counter()
            try:
                results = self.handlers[kind](items)
                if len(results) != len(items):
                    raise RuntimeError(f"{kind}: {len(results)} results for {len(items)} items")
            except BaseException as exc:  # noqa: BLE001 - delivered to every waiting request
                for job in group:
                    job.future.set_exception(exc)
                continue
            if self.on_batch:
                self.on_batch(kind, len(items), time.perf_counter() - t0)
            pos = 0
            for job in group:
                n = len(job.items)
                job.future.set_result(results[pos:pos + n])
                pos += n
