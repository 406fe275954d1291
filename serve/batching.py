"""Dynamic batching for ``serve.http``: concurrent requests run together as one batch.

Each request is decoded and preprocessed on its own (a bad image fails only its request),
then queued as one ``(1, 3, S, S)`` array. One worker task takes the first queued request
and, while other requests are on their way (arrived at the server, still being read or
decoded: :meth:`Batcher.arriving`), waits at most ``max_delay_s`` for them, up to
``max_batch`` images (a TensorRT engine's profile bounds it further); a lone request never
waits. It runs the batch through ``runtime.predict`` in a single call on a dedicated thread
and hands every request its own row. While a batch runs, new requests queue, so under load
batches fill without waiting. ``max_batch=1`` is batch-1 serving.

A full queue (``max_queue`` waiting requests) is refused at once (:class:`QueueFull`,
HTTP 503); a request whose caller stopped waiting (timeout, disconnect) is dropped before
its batch runs; scores that are not finite fail only the rows they belong to.
Imports: numpy, :mod:`serve.runtime`, :mod:`serve.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.errors import ModelOutputError, ServeError
from serve.preprocess import top_k
from serve.runtime import Prediction, Runtime, check_scores

MAX_BATCH_LIMIT = 1024
MAX_QUEUE_LIMIT = 100_000


class QueueFull(ServeError):
    """The batching queue holds ``max_queue`` requests already."""


@dataclass(frozen=True)
class BatchSettings:
    """How requests are batched: at most ``max_batch`` images, ``max_delay_s`` of waiting."""

    max_batch: int = 32
    max_delay_s: float = 0.002
    max_queue: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH_LIMIT:
            raise ServeError(f"--max-batch must be 1 to {MAX_BATCH_LIMIT}, got {self.max_batch}")
        if not (0.0 <= self.max_delay_s <= 1.0):
            raise ServeError(f"--max-delay must be 0 to 1 s, got {self.max_delay_s * 1000:g} ms")
        if not 1 <= self.max_queue <= MAX_QUEUE_LIMIT:
            raise ServeError(f"--max-queue must be 1 to {MAX_QUEUE_LIMIT}, got {self.max_queue}")


@dataclass
class _Job:
    array: np.ndarray
    k: int
    future: asyncio.Future


class Batcher:
    """Queues single-image requests and runs them in batches (see the module docstring).

    Attributes:
        max_batch: the batch cap actually used (``settings.max_batch`` bounded by the
            runtime's native limit, e.g. a TensorRT profile's maximum).
        metrics: optional :class:`serve.metrics.ServerMetrics` to record batch sizes,
            inference time and queue depth.
    """

    def __init__(self, runtime: Runtime, settings: BatchSettings, metrics: Any = None):
        self.runtime = runtime
        self.settings = settings
        high = runtime.batch_limits[1]
        self.max_batch = min(settings.max_batch, high) if high else settings.max_batch
        self.metrics = metrics
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nasdeploy-infer")
        self._running = 0  # requests in the batch being computed
        self._arriving = 0  # requests received and not yet queued (body, decoding)

    @contextlib.contextmanager
    def arriving(self) -> Any:
        """Mark a request that will be submitted soon (the worker waits for it to batch it)."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    @property
    def depth(self) -> int:
        """Requests waiting or running."""
        return (self._queue.qsize() if self._queue is not None else 0) + self._running

    def _ensure_started(self) -> asyncio.Queue[_Job]:
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._work())
        return self._queue

    def enqueue(self, array: np.ndarray, k: int) -> asyncio.Future:
        """Queue one preprocessed image; the future resolves to ``(prediction, batch size)``.

        Synchronous, so a caller inside :meth:`arriving` is counted until its image is queued.

        Raises:
            QueueFull: ``max_queue`` requests are waiting already.
        """
        queue = self._ensure_started()
        if queue.qsize() >= self.settings.max_queue:
            raise QueueFull(f"server busy: {queue.qsize()} requests are queued (--max-queue "
                            f"{self.settings.max_queue}); retry later")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Job(array, k, future))
        self._gauge()
        return future

    async def submit(self, array: np.ndarray, k: int) -> tuple[Prediction, int]:
        """Classify one preprocessed image; returns its prediction and the batch size it ran in.

        Raises:
            QueueFull: ``max_queue`` requests are waiting already.
            ModelOutputError: this image's scores are not finite.
        """
        return await self.enqueue(array, k)

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await queue.get()]
            deadline = loop.time() + self.settings.max_delay_s
            while len(jobs) < self.max_batch:
                if not queue.empty():
                    jobs.append(queue.get_nowait())
                    continue
                if self._arriving <= 0:  # nobody else is on the way: do not wait for nothing
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            live = [job for job in jobs if not job.future.done()]  # callers that gave up
            if not live:
                self._gauge()
                continue
            self._running = len(live)
            self._gauge()
            try:
                batch = np.concatenate([job.array for job in live])
                probs, seconds = await loop.run_in_executor(self._pool, self._predict, batch)
                self._deliver(live, probs, seconds)
            except Exception as exc:  # the whole batch failed: every caller gets the error
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc if isinstance(exc, ServeError)
                                                 else ServeError(f"inference failed ({type(exc).__name__})"))
            finally:
                self._running = 0
                self._gauge()

    def _predict(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        probs = np.asarray(self.runtime.predict(batch))
        return probs, time.perf_counter() - start

    def _deliver(self, jobs: list[_Job], probs: np.ndarray, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.batch(len(jobs), seconds)
        finite = np.isfinite(probs).all(axis=1) if probs.ndim == 2 else np.zeros(len(jobs), bool)
        names = self.runtime.info.class_names
        for i, job in enumerate(jobs):
            if job.future.done():
                continue
            row = probs[i:i + 1]
            try:
                if not finite[i]:
                    raise ModelOutputError("the model produced non-finite scores (NaN or infinity) for "
                                           "this image")
                check_scores(self.runtime, row)
                top = top_k(row, names, job.k)[0]
            except ServeError as exc:
                job.future.set_exception(exc)
                continue
            job.future.set_result((Prediction(top, seconds * 1000.0), len(jobs)))

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.depth)

    async def close(self) -> None:
        """Finish what is queued, then stop the worker (server shutdown)."""
        if self._queue is not None:
            while not self._queue.empty() or self._running:
                await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        self._pool.shutdown(wait=True)
