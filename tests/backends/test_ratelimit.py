"""The request-rate limiter (on a fake clock, and across threads), and the remote-model name syntax."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from vlmshield.backends.ratelimit import RateLimiter
from vlmshield.backends.remote_model import RemoteModel, is_remote_model, parse_remote_model
from vlmshield.errors import UserInputError


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_starts_are_spaced_evenly_and_an_idle_limiter_banks_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock=clock.now, sleep=clock.sleep)
    starts = []
    for _ in range(5):
        limiter.wait()
        starts.append(clock.t)
    assert [round(b - a, 9) for a, b in itertools.pairwise(starts)] == [0.25] * 4
    clock.t += 10.0  # idle for a while: no burst of banked slots afterwards
    assert limiter.wait() == 0.0
    assert limiter.wait() == pytest.approx(0.25)
    with pytest.raises(UserInputError, match="> 0"):
        RateLimiter(0)


def test_threads_share_one_limit() -> None:
    limiter = RateLimiter(50.0)
    starts: list[float] = []
    lock = threading.Lock()

    def go() -> None:
        limiter.wait()
        with lock:
            starts.append(time.monotonic())

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    starts.sort()
    # 8 starts at 50/s span at least 7 intervals of 20 ms (a little slack for the scheduler's clock)
    assert starts[-1] - starts[0] >= 7 * 0.02 - 0.005


def test_remote_model_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VLMSHIELD_OPENAI_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert is_remote_model("openai:x") and not is_remote_model("ckpt/openai")
    spec = parse_remote_model("openai:http://10.0.0.5:8000/v1#llava-hf/llava-1.5-7b-hf")
    assert (spec.base_url, spec.model) == ("http://10.0.0.5:8000/v1", "llava-hf/llava-1.5-7b-hf")
    spec = parse_remote_model("openai:org/model", "http://127.0.0.1:8000", max_concurrency=3)
    assert (spec.base_url, spec.model, spec.max_concurrency) == ("http://127.0.0.1:8000/v1", "org/model", 3)
    monkeypatch.setenv("VLMSHIELD_OPENAI_BASE_URL", "http://127.0.0.1:9000/v1")
    assert parse_remote_model("openai:m").base_url == "http://127.0.0.1:9000/v1"
    for bad, message in [
        ("openai:", "names no model"),
        ("openai:http://h:1/v1#", "names no model"),
        ("openai:ftp://h#m", "not an http"),
        ("ckpt/x", "not a remote model"),
    ]:
        with pytest.raises(UserInputError, match=message):
            parse_remote_model(bad)
    with pytest.raises(UserInputError, match="drop --base-url"):
        parse_remote_model("openai:http://a:1/v1#m", "http://b:2/v1")
    m = RemoteModel(parse_remote_model("openai:m", max_requests_per_s=5.0))
    assert m.name == "openai:m" and m.client.max_requests_per_s == 5.0 and m.device == "remote"
    m.close()
