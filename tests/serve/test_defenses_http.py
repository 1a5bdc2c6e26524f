"""Each defense through the official openai client against a real server: the answers equal the
defense run locally, streams equal non-streamed answers, per-request parameters and details."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

from vlmshield.conversation import Conversation
from vlmshield.defenses import build_defense
from vlmshield.generation import GenerationConfig
from vlmshield.models import VLM
from vlmshield.serve import ServerThread, create_app

from .conftest import IDS, KEY, client_for, user_message

PROMPT = "What is in the picture?"
N_TOKENS = 12


def _local(tiny: VLM, model_id: str, vectors: Path, image: Image.Image, **defense_args: Any) -> str:
    conv = Conversation.single(PROMPT, images=[image])
    cfg = GenerationConfig(max_new_tokens=N_TOKENS)
    name = model_id.partition(":")[2]
    if not name:
        return tiny.generate([conv], cfg).texts[0]
    spec = {"coca": "coca", "ecso": "ecso", "cmrm": f"cmrm:vectors={vectors}"}[name]
    if defense_args:
        spec += (":" if ":" not in spec else ",") + ",".join(f"{k}={v}" for k, v in defense_args.items())
    return build_defense(spec).generate(tiny, [conv], cfg)[0].text


def _stream(client: OpenAI, model_id: str, image: Image.Image, **kw: Any) -> tuple[list[str], list[Any]]:
    pieces: list[str] = []
    chunks = []
    for chunk in client.chat.completions.create(
        model=model_id,
        messages=[user_message(PROMPT, image)],  # type: ignore[list-item]
        max_tokens=N_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
        **kw,
    ):
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    return pieces, chunks


def test_models_lists_one_id_per_defense(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == IDS
    assert client.models.retrieve("tiny:cmrm").id == "tiny:cmrm"


@pytest.mark.parametrize("model_id", IDS)
def test_non_streamed_answer_is_the_defense_run_locally(
    client: OpenAI, tiny: VLM, vectors: Path, test_image: Image.Image, model_id: str
) -> None:
    r = client.chat.completions.create(
        model=model_id,
        messages=[user_message(PROMPT, test_image)],
        max_tokens=N_TOKENS,  # type: ignore[list-item]
    )
    text = r.choices[0].message.content
    assert text and text == _local(tiny, model_id, vectors, test_image)
    assert r.model == model_id and r.object == "chat.completion"
    assert r.usage is not None and r.usage.prompt_tokens > 0
    assert r.usage.completion_tokens == N_TOKENS and r.choices[0].finish_reason == "length"


@pytest.mark.parametrize("model_id", IDS)
def test_streamed_text_equals_non_streamed(client: OpenAI, test_image: Image.Image, model_id: str) -> None:
    whole = client.chat.completions.create(
        model=model_id,
        messages=[user_message(PROMPT, test_image)],
        max_tokens=N_TOKENS,  # type: ignore[list-item]
    )
    pieces, chunks = _stream(client, model_id, test_image)
    assert "".join(pieces) == whole.choices[0].message.content
    if model_id.endswith(":ecso"):
        assert len(pieces) == 1  # streamed once the check has decided
    else:
        assert len(pieces) >= N_TOKENS // 2  # token by token (a few tokens may settle together)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == {
        "prompt_tokens": whole.usage.prompt_tokens,  # type: ignore[union-attr]
        "completion_tokens": whole.usage.completion_tokens,  # type: ignore[union-attr]
    }
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].choices[0].delta.role == "assistant"


def test_text_only_requests_and_eos_finish(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny:coca", messages=[user_message("Say hello.")], max_tokens=300
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    pieces: list[str] = []
    for chunk in client.chat.completions.create(
        model="tiny:coca", messages=[user_message("Say hello.")], max_tokens=300, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == r.choices[0].message.content


def test_raw_event_stream_format(served: ServerThread, test_image: Image.Image) -> None:
    body = {
        "model": "tiny:cmrm",
        "messages": [user_message(PROMPT, test_image)],
        "max_tokens": 4,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert "usage" not in events[-1]  # only when stream_options.include_usage
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_per_request_defense_params_follow_the_allow_list(
    client: OpenAI, tiny: VLM, vectors: Path, test_image: Image.Image
) -> None:
    messages = [user_message(PROMPT, test_image)]
    r = client.chat.completions.create(
        model="tiny:coca",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=N_TOKENS,
        extra_body={"vlmshield": {"defense_params": {"alpha": 3.0}, "details": True}},
    )
    assert r.choices[0].message.content == _local(tiny, "tiny:coca", vectors, test_image, alpha=3.0)
    assert r.model_extra is not None and r.model_extra["vlmshield"]["details"]["alpha"] == 3.0
    for model_id, params, match in [
        ("tiny:coca", {"principle": "anything goes"}, "not allowed"),
        ("tiny:ecso", {"force_flag": "never"}, "not allowed"),
        ("tiny", {"alpha": 1}, "no defense"),
        ("tiny:coca", {"alpha": 999}, "alpha"),  # the defense's own validation
    ]:
        with pytest.raises(openai.BadRequestError, match=match):
            client.chat.completions.create(
                model=model_id,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=2,
                extra_body={"vlmshield": {"defense_params": params}},
            )


def test_details_expose_intermediates_but_never_the_replaced_answer(
    client: OpenAI, test_image: Image.Image
) -> None:
    r = client.chat.completions.create(
        model="tiny:ecso",
        messages=[user_message(PROMPT, test_image)],  # type: ignore[list-item]
        max_tokens=N_TOKENS,
        extra_body={"vlmshield": {"details": True}},
    )
    ext = (r.model_extra or {})["vlmshield"]
    assert ext["defense"] == "ecso" and isinstance(ext["details"]["flagged"], bool)
    assert not {"first_answer", "final_answer", "check_output", "cost"} & set(ext["details"])
    plain = client.chat.completions.create(
        model="tiny:ecso",
        messages=[user_message(PROMPT, test_image)],
        max_tokens=2,  # type: ignore[list-item]
    )
    assert "vlmshield" not in (plain.model_extra or {})


def test_details_are_off_unless_the_operator_exposes_them(tiny: VLM) -> None:
    with ServerThread(create_app(tiny, "tiny", defenses=["coca"])) as server:
        c = client_for(server.url)
        with pytest.raises(openai.BadRequestError, match="expose-details"):
            c.chat.completions.create(
                model="tiny:coca",
                messages=[user_message("hi")],  # type: ignore[list-item]
                max_tokens=2,
                extra_body={"vlmshield": {"details": True}},
            )
        assert [m.id for m in c.models.list()] == ["tiny:coca"]  # undefended id not served
        with pytest.raises(openai.NotFoundError, match="tiny:coca"):
            c.chat.completions.create(model="tiny", messages=[user_message("hi")], max_tokens=2)  # type: ignore[list-item]
