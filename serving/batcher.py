"""The ranker runs on one thread; concurrent requests' candidates share its forward passes.

A request's C candidate rows are queued; the ranker thread takes everything queued (up to
`max_rows`), concatenates the tensors, runs one forward pass and hands each request its slice.
Nothing waits for a batch to fill: at concurrency 1 a request runs alone, under load the
passes grow, and a matrix multiply over 1,600 rows does more work per second than eight
over 200. Work whose deadline passed or whose caller went away is dropped before it runs.

`score_inline` lets a worker thread that has just prepared a request run its forward pass
itself when the ranker is idle and nothing is queued: a lone request then skips a hand-off to
the ranker thread (on a loaded machine each wake-up of another thread can cost a time slice).
A lock keeps forward passes one at a time either way, so they never compete for the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class DeadlineExpired(TimeoutError):
    """The request's deadline passed before its turn came."""


@dataclass
class _Job:
    model: Any  # ServingModel; `score(batch) -> np.ndarray`
    batch: dict[str, Tensor]
    rows: int
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic()


def _post(job: _Job, value: Any, error: BaseException | None) -> None:
    # a closed loop raises RuntimeError: its caller is gone, nobody waits for the answer
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(_resolve, job.future, value, error)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class RankBatcher:
    def __init__(self, max_rows: int, on_batch: Callable[[int], None] | None = None) -> None:
        self.max_rows = max_rows
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._busy = threading.Lock()  # held during every forward pass
        self._thread = threading.Thread(target=self._run, name="recsys-ranker", daemon=True)
        self._thread.start()

    async def score(self, model: Any, batch: dict[str, Tensor], deadline: float) -> np.ndarray:
        """Logits for `batch`'s rows (`deadline` on time.monotonic())."""
        rows = len(next(iter(batch.values())))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.put(_Job(model, batch, rows, future, loop, deadline))
        return await future

    def score_inline(self, model: Any, batch: dict[str, Tensor]) -> np.ndarray | None:
        """Logits computed on the calling thread if the ranker is idle with nothing queued;
        None otherwise (then queue the work with `score`)."""
        if not self._queue.empty() or not self._busy.acquire(blocking=False):
            return None
        try:
            scores = model.score(batch)
        finally:
            self._busy.release()
        if self._on_batch is not None:
            self._on_batch(len(scores))
        return scores

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, rows, stop = [job], job.rows, False
            while rows < self.max_rows:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
                rows += more.rows
            self._run_jobs(jobs)
            if stop:
                return

    def _run_jobs(self, jobs: list[_Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.future.done():  # cancelled by the caller (deadline, disconnect)
                continue
            if now >= job.deadline:
                _post(job, None, DeadlineExpired("deadline passed before ranking"))
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
                with self._busy:
                    scores = group[0].model.score(batch)
                if self._on_batch is not None:
                    self._on_batch(len(scores))
                start = 0
                for job in group:
                    part = scores[start : start + job.rows]
                    start += job.rows
                    _post(job, part, None)
            except Exception as e:  # a bad batch fails its requests, never the thread
                log.exception("ranker forward failed")
                for job in group:
                    _post(job, None, e)
