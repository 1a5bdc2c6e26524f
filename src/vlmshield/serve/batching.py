"""The micro-batcher: one worker thread, a bounded queue, batches of compatible requests.

Requests ("jobs") are compatible when they ask the same deployment (model id), with the same
per-request defense parameters and the same generation settings; compatible jobs run as one batched
``generate`` call. The worker takes the oldest waiting job and gathers up to ``max_batch_size``
compatible jobs: it runs them once no compatible job has arrived for ``batch_wait_s``, or once the
oldest has waited ``max(batch_wait_s, min(1 s, 10% of the recent batch time))``, whichever comes
first. A burst of requests (clients that all got their answers from one batch and send again) thus
fills one batch instead of splitting into a small one and a large one, while a lone request waits
only ``batch_wait_s``, and never more than a tenth of what its batch will take anyway. The worker is
the only thread that touches the model, so a local model is never called from two threads at once.

- The queue holds at most ``max_queue`` waiting jobs; :meth:`Batcher.submit` raises
  :class:`QueueFull` beyond it (the app answers 429 with ``Retry-After``).
- A cancelled job (its client left, or its timeout passed) leaves the queue at once; a running batch
  whose jobs are all cancelled is stopped at its next decoding step (see
  :class:`~vlmshield.serve.streaming.TokenObserver`).
- If a batch fails, its rows are retried one by one, so one bad request cannot fail its neighbours
  (rows that already streamed text are failed instead of restarted).
- :meth:`Batcher.stop` drains: every job already accepted is answered before the worker exits.

Example:
    >>> b = Batcher(run_batch=lambda jobs: [RowResult(text="ok") for _ in jobs])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlmshield.conversation import Conversation
from vlmshield.generation import GenerationConfig

if TYPE_CHECKING:
    from vlmshield.serve.streaming import TextStream


#: A batch waits for company at most this fraction of the recent batch duration ...
GATHER_FRACTION = 0.1
#: ... and never more than this many seconds (or ``batch_wait_s``, if that is longer).
MAX_GATHER_S = 1.0


class QueueFull(Exception):
    """The queue is full; ``retry_after_s`` estimates when a slot frees up."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    """The server is draining and accepts no new work."""


class JobCancelled(Exception):
    """The job was cancelled (client disconnect or timeout) before it finished."""


class BatchAborted(Exception):
    """Raised inside ``generate`` (by a logits processor) when every job of the batch is cancelled."""


@dataclass
class RowResult:
    """One request's answer as the HTTP layer reports it."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Done:
    row: RowResult


@dataclass
class Failed:
    error: BaseException


@dataclass
class Delta:
    text: str


Event = Done | Failed | Delta


@dataclass(eq=False)
class Job:
    """One request in flight. Events (``Delta``, then ``Done`` or ``Failed``) reach the request's event
    loop through ``events``; the worker thread posts them with ``call_soon_threadsafe``."""

    conv: Conversation
    config: GenerationConfig
    key: Hashable
    model: str
    payload: Any = None  # what run_batch needs (the deployment and its defense)
    prompt_tokens: int | None = None
    text_stream: TextStream | None = None  # set for incremental streaming
    stream: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    first_token_at: float | None = None
    streamed_any: bool = False
    mapped: bool = False  # already bound to a generate call's row (streams only from the first one)
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _finished: bool = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def finished(self) -> bool:
        return self._finished

    def _post(self, event: Event) -> None:
        if self.loop is None:
            self.events.put_nowait(event)
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def emit(self, text: str) -> None:
        """Post streamed text (worker thread)."""
        if text and not self.cancelled:
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            self.streamed_any = True
            self._post(Delta(text))

    def finish(self, row: RowResult) -> None:
        self._finished = True
        self._post(Done(row))

    def fail(self, error: BaseException) -> None:
        self._finished = True
        self._post(Failed(error))


class Batcher:
    """Queue + worker thread; ``run_batch(jobs)`` answers a list of compatible jobs in order.

    ``on_batch(model, size, seconds)``, ``on_queue(depth, in_flight)`` and ``on_abort(model)`` (a
    batch stopped because all its requests left) report to the metrics.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Job]], list[RowResult]],
        *,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_queue: Callable[[int, int], None] | None = None,
        on_abort: Callable[[str], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.on_queue = on_queue
        self.on_abort = on_abort
        self.batch_sizes: list[int] = []  # observability (and tests)
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batch_s = 0.0  # moving average of batch duration, for Retry-After

    # ------------------------------------------------------------------ clients (event loop side)
    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def accepting(self) -> bool:
        return not self._stopping

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise :class:`QueueFull` / :class:`ShuttingDown`."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(self._retry_after_locked())
            self._ensure_started_locked()
            job.enqueued_at = time.monotonic()
            self._pending.append(job)
            self._cond.notify_all()
            self._report_locked()

    def cancel(self, job: Job) -> None:
        """Cancel ``job``: it leaves the queue now, or its batch stops early if all its jobs left."""
        job._cancelled.set()
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                pass
            else:
                job.fail(JobCancelled())
            self._cond.notify_all()
            self._report_locked()

    def _retry_after_locked(self) -> int:
        batches_ahead = len(self._pending) / max(self.max_batch_size, 1) + 1
        return max(1, min(60, math.ceil(batches_ahead * max(self._batch_s, 0.1))))

    def _report_locked(self) -> None:
        if self.on_queue is not None:
            self.on_queue(len(self._pending), len(self._running))

    # ------------------------------------------------------------------ lifecycle
    def _ensure_started_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="vlmshield-serve-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float | None = 30.0) -> bool:
        """Stop accepting, answer every queued job, then end the worker; False if it did not end in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout=timeout_s)
        return not thread.is_alive()

    # ------------------------------------------------------------------ worker
    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._pending:
                    if self._stopping:
                        return None
                    self._cond.wait()
                first = self._pending[0]
                gather = max(self.batch_wait_s, min(MAX_GATHER_S, GATHER_FRACTION * self._batch_s))
                while not self._stopping and self._pending and self._pending[0] is first:
                    same = [j.enqueued_at for j in self._pending if j.key == first.key]
                    deadline = min(first.enqueued_at + gather, max(same) + self.batch_wait_s)
                    remaining = deadline - time.monotonic()
                    if len(same) >= self.max_batch_size or remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if not self._pending or self._pending[0] is not first:
                    continue  # the first job was cancelled while waiting: start over
                batch = [j for j in self._pending if j.key == first.key][: self.max_batch_size]
                for j in batch:
                    self._pending.remove(j)
                self._running = batch
                self._report_locked()
                return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._execute(batch)
            finally:
                with self._cond:
                    self._running = []
                    self._report_locked()

    def _execute(self, jobs: list[Job], retry: bool = True) -> None:
        live = [j for j in jobs if not j.cancelled]
        for j in jobs:
            if j.cancelled and not j.finished:
                j.fail(JobCancelled())
        if not live:
            return
        now = time.monotonic()
        for j in live:
            j.started_at = now
        t0 = time.perf_counter()
        try:
            self.batch_sizes.append(len(live))
            rows = self.run_batch(live)
            if len(rows) != len(live):
                raise RuntimeError(f"the batch returned {len(rows)} rows for {len(live)} requests")
        except BatchAborted:
            for j in live:
                j.fail(JobCancelled())
            if self.on_abort is not None:
                self.on_abort(live[0].model)
            return
        except Exception as e:
            if len(live) == 1 or not retry:
                for j in live:
                    j.fail(e)
                return
            for j in live:  # isolate the failing row(s)
                if j.streamed_any:
                    j.fail(e)
                else:
                    self._execute([j], retry=False)
            return
        finally:
            dt = time.perf_counter() - t0
            self._batch_s = dt if self._batch_s == 0 else 0.8 * self._batch_s + 0.2 * dt
            if self.on_batch is not None:
                self.on_batch(live[0].model, len(live), dt)
        for j, r in zip(live, rows, strict=True):
            j.finish(r)
