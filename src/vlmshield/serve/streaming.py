"""Token-by-token streaming out of an unmodified defense, and the server-sent-events plumbing.

How tokens get out of a defense: the worker hands the defense an :class:`ObservedVLM`, a view of the
real :class:`~vlmshield.models.VLM` (same model, processor and layers) whose ``generate`` adds one
more logits processor, a :class:`TokenObserver`. A logits processor sees every row's tokens so far at
each decoding step and returns the scores untouched; the observer decodes the new tokens of the rows
that belong to streaming requests and posts the text. A request's row is the row of the encoded batch
whose conversation *is* (by identity) the request's conversation (inputs a defense rebuilt from an
encoding, such as CoCA's shared prefill, lead back to it): the row of ``none`` and ``cmrm``,
and CoCA's principle-free branch, which is forced to the same token as its principle branch at every
step. Only the first ``generate`` call that holds a request's conversation streams it; defenses that
answer in several calls (ECSO) are streamed as a whole once they finish.

The observer also stops a batch whose requests have all been cancelled (clients gone, timeouts), by
raising :class:`~vlmshield.serve.batching.BatchAborted` at the next step.

Text is streamed so that the pieces add up to exactly the non-streamed answer: each step decodes all
of the row's tokens and sends only what extends the text already sent, holding back trailing
whitespace and incomplete UTF-8 characters until later tokens settle them (:class:`TextStream`).

Example:
    >>> ts = TextStream(lambda ids: "".join(chr(96 + i) for i in ids), stop_ids={0})
    >>> ts.update([1, 2]), ts.update([1, 2, 3, 0, 9]), ts.finish("abcd")
    ('ab', 'c', ('d', True))
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from transformers import LogitsProcessor

from vlmshield.conversation import Conversation
from vlmshield.generation import GenerationConfig, GenerationOutput
from vlmshield.models import VLM
from vlmshield.models.derived_inputs import source_of
from vlmshield.serve.batching import BatchAborted, Done, Event, Failed, Job


class TextStream:
    """Incremental detokenisation that never sends text a later token would change."""

    def __init__(self, decode: Callable[[list[int]], str], stop_ids: Iterable[int] = ()) -> None:
        self.decode = decode
        self.stop_ids = set(stop_ids)
        self.sent = ""

    def update(self, token_ids: Sequence[int]) -> str:
        """All new tokens of the row so far -> the text to send now (may be empty)."""
        ids = list(token_ids)
        cut = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        if cut is not None:
            ids = ids[:cut]
        settled = self.decode(ids).lstrip().rstrip()
        while settled.endswith("\ufffd"):  # an incomplete multi-byte character
            settled = settled[:-1]
        if len(settled) > len(self.sent) and settled.startswith(self.sent):
            delta = settled[len(self.sent) :]
            self.sent = settled
            return delta
        return ""

    def finish(self, final_text: str) -> tuple[str, bool]:
        """The rest of ``final_text``; False if what was sent is not a prefix of it (never expected)."""
        if final_text.startswith(self.sent):
            delta = final_text[len(self.sent) :]
            self.sent = final_text
            return delta, True
        return "", False


class TokenObserver(LogitsProcessor):
    """Watches one ``generate`` call: streams mapped rows, stops the batch when all its jobs left."""

    def __init__(self, jobs: Sequence[Job], rows: dict[int, Job]) -> None:
        self.jobs = list(jobs)
        self.rows = rows
        self.prompt_len: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.jobs and all(j.cancelled for j in self.jobs):
            raise BatchAborted()
        if self.prompt_len is None:
            self.prompt_len = int(input_ids.shape[1])
            return scores
        for r, job in self.rows.items():
            if job.cancelled or job.text_stream is None or r >= input_ids.shape[0]:
                continue
            job.emit(job.text_stream.update(input_ids[r, self.prompt_len :].tolist()))
        return scores


class ObservedVLM(VLM):
    """The model a batch runs on: the real one, plus a :class:`TokenObserver` in every ``generate``.

    Shares the wrapped model's weights, processor and hooks (it copies the wrapper's attribute
    references, not the model). Rows are matched to requests through :meth:`encode`: the inputs it
    returns remember which conversations they hold. Only the worker thread uses it, one batch at a
    time (:meth:`begin`).
    """

    def __init__(self, base: VLM) -> None:  # no super().__init__: it is a view of ``base``
        self.__dict__.update(base.__dict__)
        self._jobs: list[Job] = []
        self._encoded: tuple[Any, list[Conversation]] | None = None

    def begin(self, jobs: Sequence[Job]) -> None:
        self._jobs = list(jobs)
        self._encoded = None

    def end(self) -> None:
        self._jobs = []
        self._encoded = None

    def encode(self, conversations: Sequence[Conversation], *args: Any, **kwargs: Any) -> Any:
        inputs = super().encode(conversations, *args, **kwargs)
        self._encoded = (inputs, list(conversations))
        return inputs

    def generate_from_inputs(
        self,
        inputs: Any,
        config: GenerationConfig | None = None,
        *,
        logits_processors: Sequence[LogitsProcessor] | None = None,
        **kwargs: Any,
    ) -> GenerationOutput:
        rows: dict[int, Job] = {}
        if self._encoded is not None and self._encoded[0] is source_of(inputs):
            index = {id(c): r for r, c in enumerate(self._encoded[1])}  # the last row holding it wins
            for job in self._jobs:
                r = index.get(id(job.conv))
                if r is not None and job.text_stream is not None and not job.mapped:
                    job.mapped = True
                    rows[r] = job
        self._encoded = None
        observer = TokenObserver(self._jobs, rows)
        return super().generate_from_inputs(
            inputs, config, logits_processors=[*(logits_processors or []), observer], **kwargs
        )


# -- waiting for a job's events ----------------------------------------------------------------------
class Disconnected(Exception):
    """The client closed the connection."""


class TimedOut(Exception):
    """The request's time budget ran out."""


@dataclass
class KeepAlive:
    """No event for a while (streams send an SSE comment)."""


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has disconnected (the request body must have been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def job_events(
    job: Job, disconnected: asyncio.Task[None], deadline: float, keepalive_s: float | None = None
) -> AsyncIterator[Event | KeepAlive]:
    """The job's events until ``Done``/``Failed``; raises :class:`Disconnected` or :class:`TimedOut`."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimedOut()
        wait = remaining if keepalive_s is None else min(remaining, keepalive_s)
        getter = asyncio.ensure_future(job.events.get())
        done, _ = await asyncio.wait(
            {getter, disconnected}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
        )
        if getter in done:
            event = getter.result()
            yield event
            if isinstance(event, Done | Failed):
                return
            continue
        getter.cancel()
        if disconnected in done:
            raise Disconnected()
        if time.monotonic() >= deadline:
            raise TimedOut()
        yield KeepAlive()


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` (or a literal such as ``[DONE]``)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_COMMENT = b": keep-alive\n\n"


class SSEResponse(Response):
    """A ``text/event-stream`` response whose body comes from ``produce(receive)``.

    ``produce`` gets the ASGI ``receive`` so it can watch for the client's disconnect while it waits;
    ``on_disconnect`` runs when sending fails because the client has gone.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        produce: Callable[[Receive], AsyncIterator[bytes]],
        *,
        headers: dict[str, str] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            status_code=200,
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})},
            media_type=self.media_type,
        )
        self.produce = produce
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        start: Message = {"type": "http.response.start", "status": 200, "headers": headers}
        body = self.produce(receive)
        try:
            await send(start)
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            if self.on_disconnect is not None:
                self.on_disconnect()
        finally:
            await body.aclose()  # type: ignore[attr-defined]
