"""Ranker forward passes on `threads` forward threads, shared by concurrent requests.

Requests' candidate rows are queued; a forward thread takes what is queued (up to `max_rows`
rows), concatenates the tensors, runs one forward pass and hands each request its slice.
Nothing waits for a batch to fill. A request that arrives while every forward thread is idle
and nothing is queued is split into one part per thread (parts of at least `MIN_PART_ROWS`
rows), so a lone request uses every core; under load requests stay whole and the threads
run different requests side by side. Work whose deadline passed or whose caller went away is
dropped before it runs.

Why several forward threads with one intra-op thread each, rather than one forward thread
with OpenMP parallelism across the cores: the cores also serve gRPC, feature lookups and
Faiss, and an OpenMP team stalls at every barrier whenever the scheduler preempts one of its
threads (its other threads spin meanwhile), while independent passes lose only their own
time slice. Measured here with nothing else running, two single-threaded passes of 400-1,000
rows ranked 218-266 requests/s of 200 candidates, one 2-thread pass 141-150 at 200 rows and
177-214 at 1,000-2,000 rows (docs/serving.md). `threads=1` keeps one forward thread, whose
passes use the process's `torch_threads`.

`score_inline` lets a worker thread that has just prepared a request take part in its
forward pass when every forward thread is idle and nothing is queued (its first part runs on
the worker, the others on forward threads): a lone request then skips a hand-off back to the
event loop and on to a forward thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

MIN_PART_ROWS = 32  # a request is not split into parts smaller than this


class DeadlineExpired(TimeoutError):
    """The request's deadline passed before its turn came."""


Deliver = Callable[[Any, BaseException | None], None]  # scores or an error, from any thread


@dataclass
class _Job:
    model: Any  # ServingModel; `score(batch) -> np.ndarray`
    batch: dict[str, Tensor]
    rows: int
    deadline: float  # time.monotonic()
    abandoned: Callable[[], bool]  # the caller went away (cancelled, deadline)
    deliver: Deliver
    part: bool = False  # one of a split request's parts


def _to_loop(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> Deliver:
    def deliver(value: Any, error: BaseException | None) -> None:
        # a closed loop raises RuntimeError: its caller is gone, nobody waits for the answer
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, future, value, error)

    return deliver


def _resolve(
    future: asyncio.Future[Any] | concurrent.futures.Future[Any],
    value: Any,
    error: BaseException | None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _rows(batch: dict[str, Tensor]) -> int:
    return len(next(iter(batch.values())))


class RankBatcher:
    def __init__(
        self, max_rows: int, on_batch: Callable[[int], None] | None = None, threads: int = 1
    ) -> None:
        self.max_rows = max_rows
        self.threads = threads
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._busy = threading.Lock()  # threads == 1: held during every forward pass
        self._state = threading.Lock()
        self._running = 0  # forward passes in progress, inline ones included
        self._workers = [
            threading.Thread(target=self._run, name=f"recsys-ranker-{i}", daemon=True)
            for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    def _idle(self) -> bool:
        with self._state:
            return not self._running and self._queue.empty()

    def _parts(self, batch: dict[str, Tensor]) -> list[tuple[dict[str, Tensor], int]]:
        rows = _rows(batch)
        count = min(self.threads, max(1, rows // MIN_PART_ROWS))
        if count == 1:
            return [(batch, rows)]
        bounds = np.linspace(0, rows, count + 1).astype(int).tolist()
        return [
            ({k: v[lo:hi] for k, v in batch.items()}, hi - lo)
            for lo, hi in itertools.pairwise(bounds)
        ]

    async def score(self, model: Any, batch: dict[str, Tensor], deadline: float) -> np.ndarray:
        """Logits for `batch`'s rows (`deadline` on time.monotonic())."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[np.ndarray]] = []
        parts = self._parts(batch) if self._idle() else [(batch, _rows(batch))]
        for part, rows in parts:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            deliver = _to_loop(loop, future)
            self._queue.put(_Job(model, part, rows, deadline, future.done, deliver, len(parts) > 1))
            futures.append(future)
        if len(futures) == 1:
            return await futures[0]
        return np.concatenate(await asyncio.gather(*futures))

    def score_inline(self, model: Any, batch: dict[str, Tensor]) -> np.ndarray | None:
        """Logits computed with the calling thread's help if every forward thread is idle
        with nothing queued; None otherwise (then queue the work with `score`)."""
        with self._state:
            if self._running or not self._queue.empty():
                return None
            self._running += 1
        try:
            if self.threads == 1:
                if not self._busy.acquire(blocking=False):
                    return None
                try:
                    scores = model.score(batch)
                finally:
                    self._busy.release()
                self._count(len(scores))
                return scores
            (first, _), *others = self._parts(batch)
            waiting = []
            for part, rows in others:
                future: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
                deliver = functools.partial(_resolve, future)
                self._queue.put(_Job(model, part, rows, float("inf"), lambda: False, deliver, True))
                waiting.append(future)
            head = model.score(first)
            self._count(len(head))
            return np.concatenate([head, *(f.result() for f in waiting)])
        finally:
            with self._state:
                self._running -= 1

    def close(self) -> None:
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join()

    def _count(self, rows: int) -> None:
        if self._on_batch is not None:
            self._on_batch(rows)

    def _run(self) -> None:
        held: _Job | None = None  # taken from the queue but left for the next pass
        stop = False  # close() was taken from the queue while draining
        while True:
            if held is not None:
                job, held = held, None
            elif stop:
                return
            else:
                job = self._queue.get()
            if job is None:
                return
            jobs, rows = [job], job.rows
            # a part of a split request runs alone: its siblings go to the other threads
            while not job.part and rows < self.max_rows:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # close(): finish what this thread holds first
                    stop = True
                    break
                if more.part:
                    held = more
                    break
                jobs.append(more)
                rows += more.rows
            self._run_jobs(jobs)

    def _run_jobs(self, jobs: list[_Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.abandoned():  # cancelled by the caller (deadline, disconnect)
                continue
            if now >= job.deadline:
                job.deliver(None, DeadlineExpired("deadline passed before ranking"))
                continue
            live.append(job)
        by_model: dict[int, list[_Job]] = {}
        for job in live:  # a hot reload may leave jobs of two models in the queue
            by_model.setdefault(id(job.model), []).append(job)
        for group in by_model.values():
            try:
                if len(group) == 1:
                    batch = group[0].batch
                else:
                    batch = {k: torch.cat([j.batch[k] for j in group]) for k in group[0].batch}
                with self._state:
                    self._running += 1
                try:
                    if self.threads == 1:
                        with self._busy:
                            scores = group[0].model.score(batch)
                    else:
                        scores = group[0].model.score(batch)
                finally:
                    with self._state:
                        self._running -= 1
                self._count(len(scores))
                start = 0
                for job in group:
                    part = scores[start : start + job.rows]
                    start += job.rows
                    job.deliver(part, None)
            except Exception as e:  # a bad batch fails its requests, never the thread
                log.exception("ranker forward failed")
                for job in group:
                    job.deliver(None, e)
