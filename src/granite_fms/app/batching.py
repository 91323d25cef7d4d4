"""Dynamic batching: one thread owns the pipeline and decodes waiting requests together.

    worker = ModelWorker(pipe, max_batch_size=8, batch_window_s=0.02, max_queue=64)
    worker.start(warmup=True)               # compiled shapes warmed on the worker's thread
    job = worker.submit(Request("transcribe", long_form=LongFormOptions(batch_size=8)), wave)
    done = job.future.result()              # Done(result, batch_size, queue_s, decode_s)
    worker.close()                          # decodes what is queued, then stops

The oldest waiting request opens a batch; requests that ask for the same thing (equal
`dataset.Request`: task, target language, keywords) join it until it holds `max_batch_size`
or `batch_window_s` has passed since the oldest arrived. Requests that queue while the model
is busy join the next batch at once. One `transcribe`/`translate` call decodes a batch: it
cuts long audio into windows and decodes the windows of all its requests together, up to
`max_batch_size` windows per generation call. Padding never changes a row, so a request gets
exactly the result it gets alone.

A request whose future was cancelled (its client went away) before its batch starts is
skipped; one cancelled later has its result dropped, and its batchmates are unaffected. If a
batch fails, its requests are decoded one at a time, so only the request at fault fails.
"""

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from granite_fms.app.dataset import Request
from granite_fms.pipeline import SpeechPipeline

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds `max_queue` requests, or the worker is closing."""


@dataclass(eq=False)
class Job:
    """One request in the queue: what to do, its waveform, and the future of its `Done`."""

    request: Request
    wave: torch.Tensor
    arrived: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Done:
    """A request's result (`transcribe(..., return_segments=True)`'s dict) and its batch."""

    result: dict[str, Any]
    batch_size: int  # requests decoded together
    queue_s: float  # from arrival to the start of its batch
    decode_s: float  # the batch's model time


@dataclass(frozen=True)
class BatchStats:
    requests: int
    windows: int
    seconds: float


class ModelWorker:
    """The one thread that runs the pipeline, fed by a queue of `Job`s.

    observe: called on the worker's thread after every decoded batch (for metrics).
    """

    def __init__(
        self,
        pipe: SpeechPipeline,
        max_batch_size: int,
        batch_window_s: float,
        max_queue: int,
        observe: Callable[[BatchStats], None] | None = None,
    ):
        self.pipe = pipe
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.max_queue = max_queue
        self.observe = observe
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._decoding = 0
        self._batch_s = 0.0  # moving average of a batch's model time, for Retry-After
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    @property
    def decoding(self) -> int:
        """Requests in the batch the model is decoding now."""
        return self._decoding

    def start(self, warmup: bool = False) -> None:
        """Start the thread and return once it takes requests; with `warmup`, after it has
        compiled the shapes of every batch size up to `max_batch_size` (on its own thread:
        CUDA graphs belong to the thread that records them)."""
        self._thread = threading.Thread(
            target=self._main, args=(warmup,), name="model-worker", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise RuntimeError(f"warm-up failed: {self._failed}") from self._failed

    def submit(self, request: Request, wave: torch.Tensor) -> Job:
        """Queue one request; raises QueueFull when `max_queue` requests wait already."""
        job = Job(request, wave)
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (--max_queue)")
            self._queue.append(job)
            self._cond.notify()
        return job

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on by one batch or more (at least 1)."""
        batches = 1 + len(self._queue) // self.max_batch_size
        return max(1, math.ceil(self._batch_s * batches))

    def close(self) -> None:
        """Decode every queued request, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _main(self, warmup: bool) -> None:
        try:
            if warmup:
                self.pipe.warmup(batch_sizes=range(1, self.max_batch_size + 1))
        except BaseException as e:  # reported by start(), on the caller's thread
            self._failed = e
            return
        finally:
            self._ready.set()
        while (batch := self._next_batch()) is not None:
            jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]
            self._decoding = len(jobs)
            if jobs:
                self._decode(jobs)
            self._decoding = 0

    def _next_batch(self) -> list[Job] | None:
        """The oldest job and those that match it, once the batch is full or its window
        has passed; None once closing with nothing queued."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._queue[0]
            deadline = first.arrived + self.batch_window_s
            while not self._closing and self._matching(first) < self.max_batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [job for job in self._queue if job.request == first.request]
            batch = batch[: self.max_batch_size]
            for job in batch:
                self._queue.remove(job)
            return batch

    def _matching(self, first: Job) -> int:
        return sum(job.request == first.request for job in self._queue)

    def _decode(self, jobs: Sequence[Job]) -> None:
        start = time.perf_counter()
        try:
            results = jobs[0].request.apply(self.pipe, [job.wave for job in jobs])
        except Exception as e:
            if len(jobs) > 1:
                logger.exception("a batch of %d failed; decoding them one at a time", len(jobs))
                for job in jobs:
                    self._decode([job])
                return
            logger.exception("decoding failed")
            jobs[0].future.set_exception(e)
            return
        seconds = time.perf_counter() - start
        self._batch_s = seconds if not self._batch_s else 0.8 * self._batch_s + 0.2 * seconds
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(Done(result, len(jobs), start - job.arrived, seconds))
        if self.observe is not None:
            windows = sum(len(result["segments"]) for result in results)
            self.observe(BatchStats(len(jobs), windows, seconds))


__all__ = ["BatchStats", "Done", "Job", "ModelWorker", "QueueFull"]
