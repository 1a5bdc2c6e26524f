"""The OpenAI-compatible server (vlmshield.serve) on a real uvicorn socket, spoken to with raw httpx."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from vlmshield.backends.openai_compat import image_to_data_url
from vlmshield.errors import ImageError, UserInputError
from vlmshield.images import MAX_IMAGE_PIXELS
from vlmshield.serve import create_app, decode_data_url
from vlmshield.testing.http import EchoBackend, image_fingerprint, running_server


@pytest.fixture(scope="module")
def echo() -> EchoBackend:
    return EchoBackend("served", fail_on="FAIL")


@pytest.fixture(scope="module")
def url(echo: EchoBackend) -> Iterator[str]:
    with running_server(create_app(echo, "served", batch_wait_s=0.3, max_batch_size=4)) as base:
        yield base


def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)


def _user(text: str, *images: str) -> dict[str, Any]:
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def _error_message(r: httpx.Response) -> str:
    body = r.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    return str(body["error"]["message"])


def test_models_and_health(url: str) -> None:
    r = httpx.get(f"{url}/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["served"]
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_chat_completion_schema(url: str) -> None:
    r = _post(url, {"model": "served", "messages": [{"role": "developer", "content": "sys"}, _user("hello")]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "served"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    desc = json.loads(choice["message"]["content"])
    assert desc["roles"] == ["system", "user"] and desc["texts"] == ["sys", "hello"]
    assert desc["do_sample"] is False and desc["max_new_tokens"] == 256  # server default, greedy
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9}


def test_sampling_fields_map_to_generation_config(url: str) -> None:
    r = _post(
        url,
        {"messages": [_user("s")], "max_tokens": 5, "temperature": 0.5, "top_p": 0.8, "top_k": 3, "seed": 2},
    )
    desc = json.loads(r.json()["choices"][0]["message"]["content"])
    assert (desc["do_sample"], desc["temperature"], desc["top_p"], desc["top_k"], desc["seed"]) == (
        True,
        0.5,
        0.8,
        3,
        2,
    )
    assert desc["max_new_tokens"] == 5
    r = _post(url, {"messages": [_user("s")], "max_completion_tokens": 6, "temperature": 0})
    desc = json.loads(r.json()["choices"][0]["message"]["content"])
    assert desc["do_sample"] is False and desc["max_new_tokens"] == 6


def test_data_url_images_are_decoded(url: str) -> None:
    arr = np.random.default_rng(0).integers(0, 256, size=(6, 10, 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95)
    jpeg_url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    r = _post(url, {"messages": [_user("look", image_to_data_url(im), jpeg_url)]})
    assert r.status_code == 200
    desc = json.loads(r.json()["choices"][0]["message"]["content"])
    assert desc["images"][0] == image_fingerprint(im)  # PNG is lossless
    assert desc["images"][1][:2] == [10, 6]


@pytest.mark.parametrize(
    ("image_url", "match"),
    [
        ("https://example.com/cat.png", "not a base64 data URL"),
        ("file:///etc/passwd", "not a base64 data URL"),
        ("data:image/png;base64,!!!notbase64", "not valid base64"),
        ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "not an image"),
    ],
)
def test_bad_images_are_400(url: str, image_url: str, match: str) -> None:
    r = _post(url, {"messages": [_user("x", image_url)]})
    assert r.status_code == 400
    assert match in _error_message(r)


def test_oversized_image_is_refused_before_decoding() -> None:
    side = int(MAX_IMAGE_PIXELS**0.5) + 10
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")  # tiny file, huge canvas
    with pytest.raises(ImageError, match="pixel limit"):
        decode_data_url("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        ({"model": "other", "messages": [_user("x")]}, 404, "not served here"),
        ({"messages": [_user("x")], "n": 2}, 400, "n=2"),
        ({"messages": []}, 400, "empty"),
        ({"model": "served"}, 400, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        ({"messages": [{"role": "system", "content": "only system"}]}, 400, "no user message"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "image_url", "image_url": "data:x"}]},
                    _user("u"),
                ]
            },
            400,
            "only user messages",
        ),
        ({"messages": [_user("x")], "max_tokens": 0}, 400, "max_new_tokens"),
        ({"messages": [_user("x")], "temperature": -1}, 400, "temperature"),
    ],
)
def test_bad_requests(url: str, body: dict[str, Any], status: int, match: str) -> None:
    r = _post(url, body)
    assert r.status_code == status, r.text
    assert match in _error_message(r)


def test_backend_failure_is_500_and_isolated_from_batch_neighbours(url: str, echo: EchoBackend) -> None:
    results: dict[str, httpx.Response] = {}

    def send(text: str) -> None:
        results[text] = _post(url, {"messages": [_user(text)]})

    threads = [threading.Thread(target=send, args=(t,)) for t in ("ok-1", "FAIL-2", "ok-3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["FAIL-2"].status_code == 500
    assert results["FAIL-2"].json()["error"]["code"] == "model_error"
    assert "told to fail" not in _error_message(results["FAIL-2"])  # internals stay in the server log
    for t in ("ok-1", "ok-3"):
        assert results[t].status_code == 200
        assert json.loads(results[t].json()["choices"][0]["message"]["content"])["texts"] == [t]


def test_concurrent_requests_share_one_generate_call(url: str, echo: EchoBackend) -> None:
    before = len(echo.batches)
    out: dict[int, str] = {}

    def send(i: int) -> None:
        r = _post(url, {"messages": [_user(f"c{i}")], "max_tokens": 3})
        out[i] = json.loads(r.json()["choices"][0]["message"]["content"])["texts"][0]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {i: f"c{i}" for i in range(4)}
    new = echo.batches[before:]
    assert sum(new) == 4 and max(new) > 1  # batch_wait_s=0.3 lets them gather


def test_create_app_validates_arguments() -> None:
    with pytest.raises(UserInputError, match="max_batch_size"):
        create_app(EchoBackend(), "m", max_batch_size=0)
