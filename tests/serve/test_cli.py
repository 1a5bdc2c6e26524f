"""``vlmshield serve``: bad input is one ``error:`` line and exit 2 (before any model loads), and the real
command, in its own process, drains accepted requests on SIGTERM and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from vlmshield.cli.main import main
from vlmshield.testing import tiny_checkpoint

from .conftest import KEY, user_message, wait_until


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--host", "0.0.0.0", "--allow-undefended"], "refusing to serve on 0.0.0.0 without API keys"),
        ([], "nothing to serve"),
        (["--defense", "cocaa"], "did you mean"),
        (["--defense", "coca", "--defense", "coca:alpha=2"], "two defenses are named 'coca'"),
        (["--defense", "none"], "--allow-undefended"),
        (["--defense", "coca:alpha=99"], "alpha"),
        (["--defense", "bad name!=coca"], "deployment name"),
        (["--defense", "cmrm:level=sample", "--allow-param", "cmrm.vectors"], "cannot be set by clients"),
        (["--defense", "coca", "--allow-param", "ecso.alpha"], "no --defense is named 'ecso'"),
        (["--defense", "coca", "--allow-param", "coca.nope"], "has no argument 'nope'"),
        (["--defense", "coca", "--allow-param", "alpha"], "NAME.KEY"),
        (["--defense", "coca", "--api-key-file", "/no/such/keys.txt"], "API key file not found"),
        (["--defense", "coca", "--max-batch-size", "0"], "max_batch_size"),
        (["--defense", "coca", "--default-max-tokens", "50", "--max-new-tokens", "10"], "default_max_tokens"),
    ],
)
def test_bad_serve_arguments_are_one_error_line_and_exit_2(
    args: list[str], match: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLMSHIELD_API_KEY", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "/no/such/model", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err


def test_a_short_key_in_the_environment_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMSHIELD_API_KEY", "short")
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", "/no/such/model", "--defense", "coca"])
    assert e.value.code == 2 and "16 characters" in capsys.readouterr().err
    assert "short" not in capsys.readouterr().err  # the key itself is not echoed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_process_drains_on_sigterm(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n", encoding="utf-8")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "VLMSHIELD_API_KEY": ""}
    cmd = [sys.executable, "-m", "vlmshield.cli.main", "serve", "--model", str(tiny_checkpoint("llava"))]
    cmd += ["--served-model-name", "tiny", "--defense", "coca", "--api-key-file", str(keys)]
    cmd += ["--port", str(port), "--max-new-tokens", "2000", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {KEY}"}
    results: dict[int, Any] = {}
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited early: {proc.stderr.read() if proc.stderr else ''}")
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s=90, what="the server to start")

        def ask(i: int) -> None:
            body = {"model": "tiny:coca", "messages": [user_message(f"q{i}")], "max_tokens": 600}
            body["min_tokens"] = 600
            r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
            results[i] = (r, time.monotonic())

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()

        def accepted() -> bool:
            text = httpx.get(f"{url}/metrics", headers=headers, timeout=5).text
            gauges = {
                ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("vlmshield_")
            }
            return gauges.get("vlmshield_queue_depth", 0) + gauges.get("vlmshield_batch_in_flight", 0) == 3

        wait_until(accepted, timeout_s=30, what="three requests accepted")
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert sorted(results) == [0, 1, 2]
    for r, done_at in results.values():
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 600
        assert done_at > t_term  # answered after the signal: drained, not cut off
    access = [json.loads(ln) for ln in stderr.splitlines() if ln.startswith('{"ts"')]
    assert [a["status"] for a in access if a["path"] == "/v1/chat/completions"] == [200, 200, 200]
    assert KEY not in stderr
