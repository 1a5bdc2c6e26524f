"""What the routes share: settings, deployments, the batch worker, metrics, and error mapping.

Example:
    >>> state = ServerState(vlm, build_deployments("M", [], allow_undefended=True), ServeSettings())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time

from starlette.types import Scope

from vlmshield.backends.base import ChatBackend
from vlmshield.errors import UserInputError
from vlmshield.models import VLM
from vlmshield.serve.batching import Batcher, Job, JobCancelled, RowResult
from vlmshield.serve.deployments import Deployment, PromptCounter, run_jobs
from vlmshield.serve.errors import APIError
from vlmshield.serve.metrics import ServeMetrics
from vlmshield.serve.settings import ServeSettings
from vlmshield.serve.streaming import ObservedVLM

log = logging.getLogger("vlmshield.serve")
CHAT_PATH = "/v1/chat/completions"


def to_api_error(error: BaseException, request_id: str) -> APIError:
    """The client-facing error for a failed job; unexpected failures are logged, not shown."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, UserInputError):
        return APIError(400, str(error), "invalid_request")
    if isinstance(error, JobCancelled):
        return APIError(499, "the request was cancelled", "cancelled")
    log.error("request %s failed: %s: %s", request_id, type(error).__name__, error, exc_info=error)
    return APIError(
        500,
        f"the model failed on this request ({type(error).__name__}); request id {request_id}",
        "model_error",
    )


class ServerState:
    """What the routes share: settings, deployments, batcher, metrics."""

    def __init__(
        self,
        backend: ChatBackend,
        deployments: list[Deployment],
        settings: ServeSettings,
    ) -> None:
        self.settings = settings
        self.deployments = {d.model_id: d for d in deployments}
        self.metrics = ServeMetrics()
        self.created = int(time.time())
        self.draining = False
        self.vlm = backend if isinstance(backend, VLM) else None
        self.counter = PromptCounter(self.vlm) if self.vlm is not None else None
        self.observed = ObservedVLM(self.vlm) if self.vlm is not None else None
        self.backend = backend
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            batch_wait_s=settings.batch_wait_s,
            max_queue=settings.max_queue,
            on_batch=self.metrics.observe_batch,
            on_queue=self.metrics.set_queue,
            on_abort=lambda model: self.metrics.aborted_batches.labels(model=model).inc(),
        )

    # worker thread
    def _run_batch(self, jobs: list[Job]) -> list[RowResult]:
        if self.observed is not None:
            self.observed.begin(jobs)
            try:
                rows = run_jobs(self.observed, jobs)
            finally:
                self.observed.end()
        else:
            rows = run_jobs(self.backend, jobs)
        for job, row in zip(jobs, rows, strict=True):
            if not job.stream:
                continue
            if job.text_stream is None:
                job.emit(row.text)
                continue
            delta, ok = job.text_stream.finish(row.text)
            if not ok:
                self.metrics.stream_mismatches.labels(model=job.model).inc()
                log.warning("stream of %s diverged from its final answer", job.model)
            job.emit(delta)
        return rows

    def resolve(self, model: str | None) -> Deployment:
        ids = list(self.deployments)
        if model is None:
            if len(ids) == 1:
                return self.deployments[ids[0]]
            raise APIError(400, f"'model' is required; this server serves {', '.join(ids)}", "model_required")
        dep = self.deployments.get(model)
        if dep is None:
            raise APIError(
                404,
                f"model {model!r} is not served here; this server serves {', '.join(ids)}",
                "model_not_found",
                param="model",
            )
        return dep

    def on_complete(self, scope: Scope, status: int, seconds: float) -> None:
        if scope.get("path") != CHAT_PATH:
            return
        state = scope.get("state", {})
        model = state.get("model") or "-"
        self.metrics.requests.labels(model=model, status=str(status)).inc()
        code = state.get("error_code")
        if code is not None or status >= 400:
            self.metrics.errors.labels(model=model, code=code or str(status)).inc()
        self.metrics.latency.labels(model=model, stream=str(bool(state.get("stream"))).lower()).observe(
            seconds
        )
