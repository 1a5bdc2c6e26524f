"""Batching, backpressure (429), client disconnects, timeouts, metrics and graceful shutdown, on real
servers whose timing the tests control (a backend that blocks until released, the tiny LLaVA)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from vlmshield.conversation import Conversation
from vlmshield.defenses import build_defense
from vlmshield.generation import GenerationConfig
from vlmshield.models import VLM
from vlmshield.serve import ServerThread, create_app

from .conftest import KEY, GateBackend, client_for, user_message, wait_until


def _metrics(url: str, key: str | None = KEY) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    text = httpx.get(f"{url}/metrics", headers=headers).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _settled(url: str, expected: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[Any, float]:
    """The metrics once they show ``expected`` (request counters are updated just after the response)."""
    seen: dict[Any, float] = {}

    def ok() -> bool:
        seen.clear()
        seen.update(_metrics(url))
        return all(seen.get(k, 0) == v for k, v in expected.items())

    wait_until(ok, timeout_s=5, what=f"metrics {expected}")
    return seen


def _in_threads(fns: list[Callable[[], Any]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=fn, daemon=True) for fn in fns]
    for t in threads:
        t.start()
    return threads


def _post(
    url: str, text: str, results: dict[str, Any], key: str = KEY, timeout: float = 30, **extra: Any
) -> None:
    body = {"model": "gate", "messages": [user_message(text)], **extra}
    try:
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
            timeout=timeout,
        )
        results[text] = r
    except httpx.HTTPError as e:
        results[text] = e


def test_concurrent_defended_requests_are_batched_and_each_row_equals_its_single_run(
    tiny: VLM, test_image: Image.Image
) -> None:
    app = create_app(tiny, "tiny", defenses=["coca"], batch_wait_s=0.5, max_batch_size=4)
    prompts = ["What is this?", "Describe the image.", "Any animals?", "What colour?"]
    answers: dict[str, str | None] = {}
    with ServerThread(app) as server:
        c = client_for(server.url)

        def ask(p: str) -> Callable[[], None]:
            def run() -> None:
                r = c.chat.completions.create(
                    model="tiny:coca",
                    messages=[user_message(p, test_image)],
                    max_tokens=8,  # type: ignore[list-item]
                )
                answers[p] = r.choices[0].message.content

            return run

        for t in _in_threads([ask(p) for p in prompts]):
            t.join(timeout=60)
        sizes = list(app.state.batcher.batch_sizes)
    assert max(sizes) > 1 and sum(sizes) == 4
    coca = build_defense("coca")
    cfg = GenerationConfig(max_new_tokens=8)
    for p in prompts:
        assert answers[p] == coca.generate(tiny, [Conversation.single(p, images=[test_image])], cfg)[0].text


def test_beyond_the_queue_is_429_with_retry_after_and_every_accepted_request_is_answered() -> None:
    gate = GateBackend()
    app = create_app(gate, "gate", max_batch_size=1, max_queue=2, api_keys=[KEY], batch_wait_s=0)
    results: dict[str, Any] = {}
    with ServerThread(app) as server:
        threads = _in_threads([lambda: _post(server.url, "a", results)])
        wait_until(gate.entered.is_set, what="first request running")
        threads += _in_threads([lambda t=t: _post(server.url, t, results) for t in ("b", "c")])
        wait_until(lambda: app.state.batcher.queue_depth == 2, what="two queued")
        with pytest.raises(openai.RateLimitError) as e:
            client_for(server.url).chat.completions.create(model="gate", messages=[user_message("d")])  # type: ignore[list-item]
        assert e.value.code == "rate_limit_exceeded"
        assert int(e.value.response.headers["retry-after"]) >= 1
        gate.release()
        for t in threads:
            t.join(timeout=30)
        _settled(
            server.url,
            {
                ("vlmshield_errors_total", (("code", "rate_limit_exceeded"), ("model", "gate"))): 1,
                ("vlmshield_requests_total", (("model", "gate"), ("status", "200"))): 3,
                ("vlmshield_requests_total", (("model", "gate"), ("status", "429"))): 1,
            },
        )
    assert {k: r.json()["choices"][0]["message"]["content"] for k, r in results.items()} == {
        t: f"echo: {t}" for t in "abc"
    }


def test_a_queued_client_that_disconnects_frees_its_queue_slot() -> None:
    gate = GateBackend()
    app = create_app(gate, "gate", max_batch_size=1, max_queue=1, api_keys=[KEY], batch_wait_s=0)
    results: dict[str, Any] = {}
    with ServerThread(app) as server:
        threads = _in_threads([lambda: _post(server.url, "a", results)])
        wait_until(gate.entered.is_set, what="first request running")
        # "b" waits in the queue, then its client gives up (closes the connection) after 0.5 s
        threads += _in_threads([lambda: _post(server.url, "b", results, timeout=0.5)])
        wait_until(lambda: app.state.batcher.queue_depth == 1, what="b queued")
        wait_until(lambda: app.state.batcher.queue_depth == 0, what="b left the queue")
        threads += _in_threads([lambda: _post(server.url, "c", results)])  # would be 429 if b held its slot
        wait_until(lambda: app.state.batcher.queue_depth == 1, what="c queued")
        gate.release()
        for t in threads:
            t.join(timeout=30)
        m = _metrics(server.url)
    assert isinstance(results["b"], httpx.ReadTimeout)
    assert results["a"].status_code == 200 and results["c"].status_code == 200
    assert gate.calls == [1, 1]  # b never ran
    assert m[("vlmshield_client_disconnects_total", (("model", "gate"),))] == 1


def test_a_client_that_disconnects_mid_stream_stops_its_generation(tiny: VLM) -> None:
    app = create_app(tiny, "tiny", api_keys=[KEY], max_batch_size=1, max_new_tokens=2000)
    n = 1900  # about 1.5 s of decoding on an idle CPU if it ran to the end
    with ServerThread(app) as server:
        c = client_for(server.url)
        stream = c.chat.completions.create(
            model="tiny",
            messages=[user_message("hi")],  # type: ignore[list-item]
            max_tokens=n,
            stream=True,
            extra_body={"min_tokens": n},
        )
        t0 = time.monotonic()
        got = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got += 1
                if got == 5:
                    break
        per_token = (time.monotonic() - t0) / got
        stream.close()
        t_closed = time.monotonic()
        wait_until(
            lambda: (
                _metrics(server.url).get(("vlmshield_aborted_batches_total", (("model", "tiny"),)), 0) == 1
            ),
            what="the batch to stop",
        )
        stopped_after = time.monotonic() - t_closed
        assert app.state.batcher.in_flight == 0
        r = c.chat.completions.create(model="tiny", messages=[user_message("next")], max_tokens=3)  # type: ignore[list-item]
        m = _metrics(server.url)
    assert r.choices[0].message.content is not None
    assert stopped_after < 0.5 * (n - got) * per_token  # far sooner than the remaining tokens would take
    assert m[("vlmshield_client_disconnects_total", (("model", "tiny"),))] == 1
    assert m[("vlmshield_completion_tokens_total", (("model", "tiny"),))] == 3  # the left stream counts none


def test_a_request_over_its_time_budget_is_504_and_cancelled() -> None:
    gate = GateBackend()
    app = create_app(gate, "gate", request_timeout_s=0.3, api_keys=[KEY], max_batch_size=1, batch_wait_s=0)
    results: dict[str, Any] = {}
    with ServerThread(app) as server:
        threads = _in_threads([lambda: _post(server.url, "slow", results)])
        wait_until(gate.entered.is_set, what="running")
        _post(server.url, "queued", results)  # waits behind "slow" longer than its budget
        with httpx.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={"model": "gate", "messages": [user_message("queued-stream")], "stream": True},
            headers={"authorization": f"Bearer {KEY}"},
        ) as r:
            events = [ln for ln in r.iter_lines() if ln]
        gate.release()
        for t in threads:
            t.join(timeout=30)
        depth = app.state.batcher.queue_depth
    assert results["slow"].status_code == 504 and results["slow"].json()["error"]["code"] == "timeout"
    assert results["queued"].status_code == 504
    assert '"code":"timeout"' in events[-1] and "[DONE]" not in events[-1]
    assert depth == 0 and gate.calls == [1]  # the timed-out queued requests never ran


def test_metrics_report_requests_batches_tokens_and_latency(
    served: ServerThread, test_image: Image.Image
) -> None:
    c = client_for(served.url)
    before = _metrics(served.url)
    c.chat.completions.create(model="tiny:cmrm", messages=[user_message("m1", test_image)], max_tokens=4)  # type: ignore[list-item]
    for _ in c.chat.completions.create(
        model="tiny:cmrm",
        messages=[user_message("m2", test_image)],
        max_tokens=4,
        stream=True,  # type: ignore[list-item]
    ):
        pass
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[user_message("x")])  # type: ignore[list-item]

    def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (name, tuple(sorted(labels.items())))

    grown = {
        key("vlmshield_requests_total", model="tiny:cmrm", status="200"): 2,
        key("vlmshield_completion_tokens_total", model="tiny:cmrm"): 8,
        key("vlmshield_batch_size_count", model="tiny:cmrm"): 2,
        key("vlmshield_request_duration_seconds_count", model="tiny:cmrm", stream="true"): 1,
        key("vlmshield_time_to_first_token_seconds_count", model="tiny:cmrm"): 1,
        key("vlmshield_errors_total", model="-", code="model_not_found"): 1,
    }
    m = _settled(served.url, {k: before.get(k, 0) + v for k, v in grown.items()})
    assert m[("vlmshield_queue_depth", ())] == 0 and m[("vlmshield_batch_in_flight", ())] == 0
    assert m[("vlmshield_prompt_tokens_total", (("model", "tiny:cmrm"),))] > 0


def test_metrics_registry_is_per_app() -> None:
    a, b = create_app(GateBackend(), "a"), create_app(GateBackend(), "b")
    assert a.state.metrics.registry is not b.state.metrics.registry


def test_graceful_shutdown_stops_accepting_and_answers_every_accepted_request() -> None:
    gate = GateBackend()
    app = create_app(gate, "gate", max_batch_size=2, max_queue=16, api_keys=[KEY], batch_wait_s=0)
    results: dict[str, Any] = {}
    texts = [f"r{i}" for i in range(6)]
    server = ServerThread(app).start()
    threads = _in_threads([lambda t=t: _post(server.url, t, results) for t in texts])
    batcher = app.state.batcher
    wait_until(lambda: batcher.queue_depth + batcher.in_flight == 6, what="all six accepted")
    server.request_shutdown()
    # the listening socket closes: nothing new gets in
    wait_until(lambda: not _reachable(server.url), what="the listening socket to close")
    time.sleep(0.5)  # a server that does not wait for accepted requests has cut them off by now
    assert server.thread.is_alive() and not results  # still draining: all six wait on the model
    gate.release()
    for t in threads:
        t.join(timeout=30)
    assert server.stop(timeout_s=30)
    assert {t: r.json()["choices"][0]["message"]["content"] for t, r in results.items()} == {
        t: f"echo: {t}" for t in texts
    }
    assert sum(gate.calls) == 6 and not batcher.accepting and batcher._thread is not None
    assert not batcher._thread.is_alive()


def _reachable(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=2)
        return True
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        # refused, or reset by a listening socket that closed after the kernel queued the probe
        return False
