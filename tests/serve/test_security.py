"""API keys, bind refusal, unknown models, oversized and malformed input: each answered in OpenAI's
error shape, without tracebacks, and keys never logged."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from vlmshield.errors import UserInputError
from vlmshield.models import VLM
from vlmshield.serve import ServerThread, create_app
from vlmshield.serve.auth import check_bearer
from vlmshield.serve.settings import check_bind, load_api_keys
from vlmshield.testing.http import EchoBackend

from .conftest import KEY, OTHER_KEY, client_for, user_message, wait_until


def _auth(key: str | None) -> dict[str, str]:
    return {} if key is None else {"authorization": f"Bearer {key}"}


def _error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text and 'File "' not in r.text
    return dict(body["error"])


@pytest.fixture(scope="module")
def small(tiny: VLM) -> Iterator[ServerThread]:
    """Small limits to run into: 64 KiB bodies, 2 images, 40 prompt tokens, 16 new tokens."""
    app = create_app(
        tiny,
        "tiny",
        defenses=["coca"],
        api_keys=[KEY],
        max_body_bytes=64 * 1024,
        max_images=2,
        max_prompt_tokens=40,
        max_new_tokens=16,
        default_max_tokens=8,
    )
    with ServerThread(app) as server:
        yield server


def _chat(url: str, body: Any, key: str | None = KEY, **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=_auth(key), timeout=30, **kw)


@pytest.mark.parametrize(
    ("key", "code"), [(None, "missing_api_key"), ("wrong-key-0123456789abcdef", "invalid_api_key")]
)
def test_requests_without_the_right_key_get_401_on_every_route(
    served: ServerThread, key: str | None, code: str
) -> None:
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/tiny"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),  # no route discovery without a key
    ]:
        body = {"model": "tiny", "messages": [user_message("hi")]} if method == "POST" else None
        r = httpx.request(method, f"{served.url}{path}", json=body, headers=_auth(key))
        assert r.status_code == 401, (path, r.text)
        assert _error(r)["code"] == code and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{served.url}/health").json() == {"status": "ok"}  # probes need no key


def test_the_official_client_with_missing_wrong_and_right_keys(served: ServerThread) -> None:
    messages = [user_message("hi")]
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        client_for(served.url, key="nope-nope-nope-nope-nope").chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=2,  # type: ignore[arg-type]
        )
    with pytest.raises(openai.AuthenticationError, match="missing API key"):
        client_for(served.url).chat.completions.create(
            model="tiny",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=2,
            extra_headers={"Authorization": openai.Omit()},  # type: ignore[dict-item]
        )
    for key in (KEY, OTHER_KEY):  # every configured key works
        r = client_for(served.url, key=key).chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=2,  # type: ignore[arg-type]
        )
        assert r.choices[0].message.content is not None


def test_keys_are_never_logged(served: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    ids = []
    with caplog.at_level(logging.INFO, logger="vlmshield.serve.access"):
        for key in (KEY, "wrong-key-0123456789abcdef", None):
            r = _chat(
                served.url, {"model": "tiny", "messages": [user_message("hi")], "max_tokens": 2}, key=key
            )
            ids.append(r.headers["x-request-id"])

        def lines() -> dict[str, dict[str, Any]]:
            out = [json.loads(r.getMessage()) for r in caplog.records if r.name == "vlmshield.serve.access"]
            return {ln["request_id"]: ln for ln in out}

        wait_until(lambda: set(ids) <= set(lines()), what="the three access-log lines")
    by_id = lines()
    ok, wrong, missing = (by_id[i] for i in ids)
    assert (ok["status"], wrong["status"], missing["status"]) == (200, 401, 401)
    assert ok["model"] == "tiny" and ok["completion_tokens"] >= 1 and ok["path"] == "/v1/chat/completions"
    assert (wrong["error_code"], missing["error_code"]) == ("invalid_api_key", "missing_api_key")
    assert not any("key-0123456789" in r.getMessage() for r in caplog.records)


def test_check_bearer_needs_an_exact_key() -> None:
    keys = [KEY.encode()]
    assert check_bearer(f"Bearer {KEY}", keys) and check_bearer(f"bearer {KEY}", keys)
    for header in (None, "", KEY, f"Basic {KEY}", f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", "Bearer "):
        assert not check_bearer(header, keys)


def test_bind_beyond_loopback_needs_keys_or_insecure() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, has_keys=False, insecure=False)
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.org"):
        with pytest.raises(UserInputError, match="without API keys"):
            check_bind(host, has_keys=False, insecure=False)
        check_bind(host, has_keys=True, insecure=False)
        check_bind(host, has_keys=False, insecure=True)


def test_api_keys_from_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "keys.txt"
    f.write_text(f"# ops keys\n{KEY}\n\n{OTHER_KEY}\n", encoding="utf-8")
    assert load_api_keys(f, env="") == (KEY, OTHER_KEY)
    assert load_api_keys(None, env=f"{KEY}, {OTHER_KEY}") == (KEY, OTHER_KEY)
    (tmp_path / "empty.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="no key"):
        load_api_keys(tmp_path / "empty.txt", env="")
    with pytest.raises(UserInputError, match="16 characters"):
        create_app(EchoBackend(), "m", api_keys=["short"])


def test_unknown_model_is_404_naming_the_served_ids(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[user_message("hi")], max_tokens=2)  # type: ignore[list-item]
    assert e.value.code == "model_not_found" and "tiny:coca" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("tiny:nope")


def _png_data_url(side: int) -> str:
    buf = io.BytesIO()
    Image.effect_noise((side, side), 80).convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_oversized_bodies_are_413_by_length_and_by_count(small: ServerThread) -> None:
    body = {"model": "tiny:coca", "messages": [user_message("x")], "pad": "x" * 70_000}
    r = _chat(small.url, body)
    assert r.status_code == 413 and _error(r)["code"] == "request_too_large"
    raw = json.dumps(body).encode()

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(raw), 8192):
            yield raw[i : i + 8192]

    r = httpx.post(
        f"{small.url}/v1/chat/completions",
        content=chunked(),
        headers={**_auth(KEY), "content-type": "application/json"},
    )
    assert r.status_code == 413 and _error(r)["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("body", "code", "match"),
    [
        ("{not json", "invalid_request", "not valid JSON"),
        ([1, 2], "invalid_request", "invalid request"),
        ({"model": "tiny:coca"}, "invalid_request", "messages"),
        ({"model": "tiny:coca", "messages": [{"role": "tool", "content": "x"}]}, "invalid_request", "role"),
        ({"model": "tiny:coca", "messages": "hi"}, "invalid_request", "messages"),
        (
            {"model": "tiny:coca", "messages": [user_message("x")], "max_tokens": 17},
            "invalid_request",
            "limit of 16",
        ),
        (
            {"model": "tiny:coca", "messages": [user_message("x")], "max_tokens": "many"},
            "invalid_request",
            "max_tokens",
        ),
        ({"model": "tiny:coca", "messages": [user_message("x")], "stop": ["\n"]}, "unsupported", "stop"),
        ({"model": "tiny:coca", "messages": [user_message("x")], "n": 3}, "unsupported", "n=3"),
        (
            {
                "model": "tiny:coca",
                "messages": [user_message("x")],
                "stream_options": {"include_usage": True},
            },
            "invalid_request",
            "stream=true",
        ),
        (
            {"model": "tiny:coca", "messages": [user_message("x")], "vlmshield": {"bogus": 1}},
            "invalid_request",
            "vlmshield",
        ),
        ({"model": "tiny:coca", "messages": [user_message("word " * 60)]}, "prompt_too_long", "limit of 40"),
        (
            {
                "model": "tiny:coca",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": _png_data_url(4)}}] * 3
                        + [{"type": "text", "text": "x"}],
                    }
                ],
            },
            "too_many_images",
            "limit of 2",
        ),
    ],
)
def test_malformed_and_over_limit_requests_are_400(
    small: ServerThread, body: Any, code: str, match: str
) -> None:
    if isinstance(body, str):
        r = httpx.post(
            f"{small.url}/v1/chat/completions",
            content=body.encode(),
            headers={**_auth(KEY), "content-type": "application/json"},
        )
    else:
        r = _chat(small.url, body)
    assert r.status_code == 400, r.text
    err = _error(r)
    assert err["code"] == code and err["type"] == "invalid_request_error" and match in err["message"]


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "file:///etc/passwd",
        "/etc/passwd",
        "data:image/png;base64,!!!notbase64",
        "data:image/png;base64," + base64.b64encode(b"not an image").decode(),
    ],
)
def test_images_only_as_data_urls(small: ServerThread, url: str) -> None:
    msg = {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"}],
    }
    r = _chat(small.url, {"model": "tiny:coca", "messages": [msg]})
    assert r.status_code == 400 and "passwd" not in r.text.replace(url, "")
    _error(r)


def test_unhandled_paths_and_methods_use_the_error_shape(small: ServerThread) -> None:
    r = httpx.get(f"{small.url}/v1/chat/completions", headers=_auth(KEY))
    assert r.status_code == 405 and _error(r)["code"] == "method_not_allowed"
    r = httpx.get(f"{small.url}/v2/anything", headers=_auth(KEY))
    assert r.status_code == 404 and _error(r)["code"] == "not_found"
