"""The server's parts on their own: incremental detokenisation, deployments, the batcher, settings."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from vlmshield.conversation import Conversation
from vlmshield.errors import UserInputError
from vlmshield.generation import GenerationConfig
from vlmshield.models import VLM
from vlmshield.serve import ServeSettings, parse_deployment
from vlmshield.serve.batching import Batcher, Done, Failed, Job, JobCancelled, QueueFull, RowResult
from vlmshield.serve.deployments import MAX_VARIANTS, build_deployments, public_details
from vlmshield.serve.settings import DeploymentSpec, parse_allow_params
from vlmshield.serve.streaming import TextStream

from .conftest import wait_until


def _stream_all(ts: TextStream, ids: list[int], final: str) -> tuple[str, bool]:
    sent = "".join(ts.update(ids[:k]) for k in range(len(ids) + 1))
    rest, ok = ts.finish(final)
    return sent + rest, ok


def test_text_stream_adds_up_to_the_decoded_answer_with_a_real_tokenizer(tiny: VLM) -> None:
    tok = tiny.tokenizer
    ids: list[int] = tok("  Hello, world! It's 3.5 km -- isn't it? Yes . ok ,done  ")["input_ids"]
    final = tok.decode(ids, skip_special_tokens=True).strip()
    ts = TextStream(lambda x: str(tok.decode(x, skip_special_tokens=True)), tiny.eos_token_ids)
    pieces = [ts.update(ids[:k]) for k in range(len(ids) + 1)]
    rest, ok = ts.finish(final)
    assert ok and "".join(pieces) + rest == final
    assert sum(1 for p in pieces if p) > len(ids) // 2  # incremental, not all at the end


def test_text_stream_holds_back_incomplete_characters_and_trailing_spaces() -> None:
    raw = {1: b"caf", 2: b"\xc3", 3: b"\xa9", 4: b" ", 5: b".", 0: b"<eos>"}

    def decode(ids: list[int]) -> str:  # bytes-level BPE, with cleanup of " ." like transformers'
        return b"".join(raw[i] for i in ids).decode("utf-8", "replace").replace(" .", ".")

    ts = TextStream(decode, stop_ids={0})
    assert [ts.update([1, 2, 3, 4, 5, 0, 9][:k]) for k in range(1, 7)] == ["caf", "", "é", "", ".", ""]
    assert ts.finish("café.") == ("", True)
    assert _stream_all(TextStream(decode), [1, 2, 3, 4, 5], "café.") == ("café.", True)
    assert TextStream(decode).finish("x") == ("x", True)
    diverged = TextStream(decode)
    diverged.update([1])
    assert diverged.finish("other") == ("", False)


def test_public_details_keep_scalars_and_hide_answers_and_prompts() -> None:
    details = {
        "flagged": True,
        "caption": "a cat",
        "p_yes": 0.7,
        "first_answer": "the harmful answer",
        "final_answer": "...",
        "check_output": "yes",
        "principle": "secret",
        "cost": {"answer": 1},
        "nested": [1],
    }
    assert public_details(details) == {"flagged": True, "caption": "a cat", "p_yes": 0.7}


def test_deployment_specs() -> None:
    assert parse_deployment("strict=coca:alpha=4") == DeploymentSpec(name="strict", defense="coca:alpha=4")
    assert parse_deployment("coca:alpha=1,position=after").name == "coca"
    assert parse_deployment(" ecso ").name == "ecso"
    assert parse_deployment("@/tmp/my_spec.json").name == "my_spec"
    assert parse_allow_params(["coca.alpha", "strict.alpha", "coca.position"]) == {
        "coca": ["alpha", "position"],
        "strict": ["alpha"],
    }
    for bad in ("principle_file", "vectors", "base_url"):
        with pytest.raises(UserInputError, match="cannot be set by clients"):
            parse_deployment("coca", allow_params=[bad])
    deps = build_deployments(
        "M", [parse_deployment("coca"), parse_deployment("x=coca:alpha=2")], allow_undefended=False
    )
    assert [d.model_id for d in deps] == ["M:coca", "M:x"]
    assert [
        d.incremental for d in build_deployments("M", [parse_deployment("ecso")], allow_undefended=True)
    ] == [
        True,
        False,
    ]


def test_per_request_variants_are_cached_and_bounded() -> None:
    (dep,) = build_deployments(
        "M", [parse_deployment("coca", allow_params=["alpha"])], allow_undefended=False
    )
    key1, d1 = dep.variant({"alpha": 2.0})
    key2, d2 = dep.variant({"alpha": 2.0})
    assert key1 == key2 and d1 is d2 and d1 is not dep.defense and d1.spec()["alpha"] == 2.0  # type: ignore[union-attr]
    assert dep.variant({}) == ((), dep.defense)
    for i in range(MAX_VARIANTS + 5):
        dep.variant({"alpha": i / 10})
    assert len(dep._variants) == MAX_VARIANTS


def test_settings_validation() -> None:
    assert ServeSettings().graceful_timeout_s == 310.0
    assert ServeSettings(drain_timeout_s=5).graceful_timeout_s == 5
    with pytest.raises(ValueError, match="default_max_tokens"):
        ServeSettings(default_max_tokens=20, max_new_tokens=10)
    with pytest.raises(ValueError, match="extra"):
        ServeSettings(bogus=1)  # type: ignore[call-arg]


# -- the batcher on its own -----------------------------------------------------------------------------
def _job(key: Any, text: str = "x") -> Job:
    return Job(conv=Conversation.single(text), config=GenerationConfig(), key=key, model=str(key))


def _result(job: Job) -> RowResult | BaseException:
    event = job.events.get_nowait()
    return event.row if isinstance(event, Done) else event.error if isinstance(event, Failed) else event


def test_batcher_groups_compatible_jobs_up_to_the_batch_size_and_drains_on_stop() -> None:
    gate = threading.Event()
    seen: list[list[str]] = []

    def run(jobs: list[Job]) -> list[RowResult]:
        gate.wait(10)
        seen.append([j.conv.last_user_text for j in jobs])
        return [RowResult(text=j.conv.last_user_text.upper()) for j in jobs]

    b = Batcher(run, max_batch_size=2, batch_wait_s=0.0, max_queue=5)
    first = _job("a", "a0")
    b.submit(first)
    wait_until(lambda: b.in_flight == 1, what="first batch running")
    jobs = [_job("a", "a1"), _job("b", "b1"), _job("a", "a2"), _job("a", "a3"), _job("b", "b2")]
    for j in jobs:
        b.submit(j)
    with pytest.raises(QueueFull):
        b.submit(_job("a", "late"))
    b.cancel(jobs[3])  # a3 leaves the queue
    gate.set()
    assert b.stop(timeout_s=10)
    assert seen == [["a0"], ["a1", "a2"], ["b1", "b2"]]  # oldest first, same key together, at most 2
    assert isinstance(_result(jobs[3]), JobCancelled)
    assert [_result(j).text for j in (first, jobs[0], jobs[1], jobs[2], jobs[4])] == [
        "A0",
        "A1",
        "B1",
        "A2",
        "B2",
    ]  # type: ignore[union-attr]


def test_batcher_isolates_a_failing_row_and_waits_for_company() -> None:
    def run(jobs: list[Job]) -> list[RowResult]:
        if any("FAIL" in j.conv.last_user_text for j in jobs):
            raise RuntimeError("bad row")
        return [RowResult(text="ok") for _ in jobs]

    b = Batcher(run, max_batch_size=8, batch_wait_s=0.3)
    jobs = [_job("k", t) for t in ("one", "FAIL", "three")]
    for j in jobs:
        b.submit(j)
        time.sleep(0.01)
    assert b.stop(timeout_s=10)
    assert b.batch_sizes[0] == 3  # gathered within batch_wait_s
    results = [_result(j) for j in jobs]
    assert isinstance(results[1], RuntimeError)
    assert [r.text for r in (results[0], results[2])] == ["ok", "ok"]  # type: ignore[union-attr]
