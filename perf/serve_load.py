"""Load on a defended endpoint: requests/s and latency for N concurrent clients, per model id.

Starts ``vlmshield serve`` in its own process on 127.0.0.1 (a free port, an API key, the undefended id
and one id per defense), then for each N in ``--clients`` and each model id in turn runs N closed-loop
clients (each sends its next request when the last one is answered) and measures:

- requests/s (answered requests over the level's wall time; the median over ``--rounds`` interleaved
  rounds), p50 / p95 latency (all rounds pooled), and the throughput at N = 32 over N = 1 (the median
  of the per-round ratios, which a shared machine's drift affects least);
- ``lost``: requests that got no answer (errors, timeouts, a 429 still refused after retries): must be 0;
- ``corrupted``: answers that differ from the same prompt's answer at N = 1 (greedy decoding, so a
  batched row must equal the row alone), or malformed responses;
- ``rate_limited``: 429 answers (retried after ``Retry-After``, at most 5 times per request);
- the server's peak resident memory (``VmHWM``);
- at N = 1, streamed requests per id: time to the first text, total time, and whether the streamed
  text equals the non-streamed answer.

Every request goes to 127.0.0.1; the run is bounded by ``--time-limit`` (levels not started in time are
reported as skipped) and each request by the server's ``--request-timeout`` (a request the server
times out is lost). Prints one JSON object.

    python perf/serve_load.py                       # tiny LLaVA, N = 1, 8, 32, 64 (about 2-4 min)
    python perf/serve_load.py --model demo --max-tokens 16 --rounds 1 --per-client 1 --min-requests 8 \
        --stream-requests 4 --time-limit 1200
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

KEY = "bench-" + "0123456789abcdef" * 2
QUERIES = [
    "What is in this picture?",
    "Describe the image in detail.",
    "How many objects can you see here?",
    "What colours are the main objects?",
    "Is this scene indoors or outdoors?",
    "Write a short story inspired by this image.",
    "What could this image be used for?",
    "Name three things shown here.",
]
DEMO_VECTORS = Path(__file__).resolve().parents[1] / "src/vlmshield/demo/artifacts/cmrm_vectors.safetensors"


def _image(i: int, size: int) -> Image.Image:
    rng = np.random.default_rng(1000 + i)
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8), "RGB")


def _data_url(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _model_path(name: str) -> str:
    if name == "tiny":
        from vlmshield.testing import tiny_checkpoint

        return str(tiny_checkpoint("llava"))
    return name


def _cmrm_spec(model: str, path: str, work: Path, env: dict[str, str]) -> str:
    """Dataset-level vectors: the demo's shipped ones, or calibrated now on 8 synthetic anchors."""
    if model == "demo" and DEMO_VECTORS.is_file():
        return f"cmrm:vectors={DEMO_VECTORS}"
    anchors = work / "anchors.jsonl"
    with anchors.open("w", encoding="utf-8") as f:
        for i, q in enumerate(QUERIES):
            _image(500 + i, 48).save(work / f"a{i}.png")
            f.write(json.dumps({"image": f"a{i}.png", "query": q}) + "\n")
    out = work / "v.safetensors"
    cmd = [sys.executable, "-m", "vlmshield.cli.main", "calibrate", "cmrm", "--model", path]
    cmd += ["--anchor", str(anchors), "--out", str(out), "--device", "cpu"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    return f"cmrm:vectors={out}"


class Level:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.lost = 0
        self.corrupted = 0
        self.rate_limited = 0
        self.texts: list[tuple[int, str]] = []


async def _one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], level: Level, timeout_s: float
) -> str | None:
    t0 = time.perf_counter()
    for _ in range(6):
        try:
            r = await client.post(url, json=body, timeout=timeout_s)
        except httpx.HTTPError:
            level.lost += 1
            return None
        if r.status_code == 429:
            level.rate_limited += 1
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            continue
        if r.status_code != 200:
            level.lost += 1
            return None
        try:
            text = r.json()["choices"][0]["message"]["content"]
            assert isinstance(text, str)
        except (ValueError, KeyError, IndexError, AssertionError):
            level.corrupted += 1
            return None
        level.latencies.append(time.perf_counter() - t0)
        return text
    level.lost += 1
    return None


async def _run_level(
    base: str,
    model_id: str,
    n: int,
    per_client: int,
    min_requests: int,
    bodies: list[dict[str, Any]],
    timeout_s: float,
) -> tuple[Level, float, int]:
    level = Level()
    total = max(min_requests, n * per_client)
    counter = iter(range(total))
    url = f"{base}/v1/chat/completions"
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    headers = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(limits=limits, headers=headers) as client:

        async def worker() -> None:
            for k in counter:
                prompt = k % len(bodies)
                text = await _one(client, url, {**bodies[prompt], "model": model_id}, level, timeout_s)
                if text is not None:
                    level.texts.append((prompt, text))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(n)))
        wall = time.perf_counter() - t0
    return level, wall, total


async def _stream_level(base: str, model_id: str, bodies: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """``count`` streamed requests one after another: time to the first text, and the whole text."""
    ttft: list[float] = []
    total: list[float] = []
    texts: list[tuple[int, str]] = []
    lost = 0
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {KEY}"}) as client:
        for k in range(count):
            body = {**bodies[k % len(bodies)], "model": model_id, "stream": True}
            t0 = time.perf_counter()
            first: float | None = None
            pieces: list[str] = []
            done = False
            try:
                async with client.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as r:
                    async for line in r.aiter_lines():
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data: "):
                            choices = json.loads(line[6:]).get("choices") or [{}]
                            piece = choices[0].get("delta", {}).get("content")
                            if piece:
                                first = first if first is not None else time.perf_counter() - t0
                                pieces.append(piece)
            except httpx.HTTPError:
                done = False
            if not done or first is None:
                lost += 1
                continue
            ttft.append(first)
            total.append(time.perf_counter() - t0)
            texts.append((k % len(bodies), "".join(pieces)))
    return {"ttft": ttft, "total": total, "texts": texts, "lost": lost}


def _pct(xs: list[float], q: int) -> float | None:
    if not xs:
        return None
    return (
        round(statistics.quantiles(xs, n=100, method="inclusive")[q - 1], 4)
        if len(xs) > 1
        else round(xs[0], 4)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (tiny random LLaVA), demo, or a checkpoint path")
    ap.add_argument("--clients", default="1,8,32,64", help="concurrency levels N")
    ap.add_argument("--defenses", default="coca,ecso,cmrm", help="defenses served next to the undefended id")
    ap.add_argument(
        "--max-tokens", type=int, default=32, help="new tokens per answer (forced, no early stop)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all levels and ids")
    ap.add_argument("--per-client", type=int, default=2, help="requests per client per level and round")
    ap.add_argument(
        "--min-requests", type=int, default=16, help="at least this many requests per level and round"
    )
    ap.add_argument("--stream-requests", type=int, default=8, help="streamed requests per id at N = 1")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server process")
    ap.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="the server's budget per request (clients wait 30 s more)",
    )
    ap.add_argument("--time-limit", type=float, default=480.0, help="seconds; later levels are skipped")
    args = ap.parse_args()
    t_start = time.monotonic()
    levels = [int(x) for x in args.clients.split(",")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads), "VLMSHIELD_API_KEY": ""}
    env["TOKENIZERS_PARALLELISM"] = "false"
    path = _model_path(args.model)
    n_prompts = min(len(QUERIES), max(1, args.min_requests))
    bodies = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _data_url(_image(i, args.image_size))}},
                        {"type": "text", "text": QUERIES[i]},
                    ],
                }
            ],
            "max_tokens": args.max_tokens,
            "min_tokens": args.max_tokens,
        }
        for i in range(n_prompts)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "keys.txt").write_text(KEY + "\n", encoding="utf-8")
        specs = []
        for d in [x for x in args.defenses.split(",") if x]:
            specs.append(_cmrm_spec(args.model, path, work, env) if d == "cmrm" else d)
        port = _free_port()
        cmd = [
            sys.executable,
            "-m",
            "vlmshield.cli.main",
            "serve",
            "--model",
            path,
            "--served-model-name",
            "m",
        ]
        cmd += ["--allow-undefended", "--port", str(port), "--api-key-file", str(work / "keys.txt")]
        cmd += ["--max-batch-size", str(args.max_batch_size), "--max-queue", str(args.max_queue)]
        cmd += ["--request-timeout", str(args.request_timeout)]
        cmd += ["--no-access-log", "--log-level", "warning", "--device", "cpu"]
        for s in specs:
            cmd += ["--defense", s]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - t_start > 300:
                    raise SystemExit("server did not start within 300 s")
                time.sleep(0.2)
            rss_start = _rss_mb(proc.pid, "VmRSS")
            ids = ["m"] + [f"m:{s.partition(':')[0]}" for s in specs]
            reference: dict[str, dict[int, str]] = {i: {} for i in ids}
            rounds: dict[tuple[str, int], list[tuple[Level, float, int]]] = {}
            skipped: set[tuple[str, int]] = set()
            for _ in range(args.rounds):  # interleaved rounds: drift on a shared machine hits all alike
                for n in levels:
                    for model_id in ids:
                        if time.monotonic() - t_start > args.time_limit:
                            skipped.add((model_id, n))
                            continue
                        level, wall, total = asyncio.run(
                            _run_level(
                                base,
                                model_id,
                                n,
                                args.per_client,
                                args.min_requests,
                                bodies,
                                args.request_timeout + 30,
                            )
                        )
                        ref = reference[model_id]
                        for prompt, text in level.texts:
                            if prompt not in ref:
                                ref[prompt] = text
                            elif text != ref[prompt]:
                                level.corrupted += 1
                        rounds.setdefault((model_id, n), []).append((level, wall, total))
            results: dict[str, dict[str, Any]] = {i: {} for i in ids}
            speedup: dict[str, float] = {}
            for model_id in ids:
                for n in levels:
                    runs = rounds.get((model_id, n), [])
                    if not runs:
                        results[model_id][str(n)] = {"skipped": "time limit"}
                        continue
                    lat = [x for lv, _, _ in runs for x in lv.latencies]
                    results[model_id][str(n)] = {
                        "rounds": len(runs),
                        "requests": sum(t for _, _, t in runs),
                        "answered": len(lat),
                        "requests_per_s": round(
                            statistics.median(len(lv.latencies) / w for lv, w, _ in runs), 3
                        ),
                        "p50_s": _pct(lat, 50),
                        "p95_s": _pct(lat, 95),
                        "lost": sum(lv.lost for lv, _, _ in runs),
                        "corrupted": sum(lv.corrupted for lv, _, _ in runs),
                        "rate_limited": sum(lv.rate_limited for lv, _, _ in runs),
                        "partial": (model_id, n) in skipped,
                    }
                ones, many = rounds.get((model_id, 1), []), rounds.get((model_id, 32), [])
                ratios = [
                    (len(b.latencies) / wb) / (len(a.latencies) / wa)
                    for (a, wa, _), (b, wb, _) in zip(ones, many, strict=False)
                    if a.latencies
                ]
                if ratios:
                    speedup[model_id] = round(statistics.median(ratios), 2)
            streaming: dict[str, Any] = {}
            for model_id in ids:
                if args.stream_requests <= 0 or time.monotonic() - t_start > args.time_limit:
                    continue
                st = asyncio.run(_stream_level(base, model_id, bodies, args.stream_requests))
                ref = reference[model_id]
                differs = sum(1 for prompt, text in st["texts"] if prompt in ref and text != ref[prompt])
                streaming[model_id] = {
                    "requests": args.stream_requests,
                    "ttft_p50_s": _pct(st["ttft"], 50),
                    "total_p50_s": _pct(st["total"], 50),
                    "lost": st["lost"],
                    "text_differs_from_non_streamed": differs,
                }
            peak = _rss_mb(proc.pid, "VmHWM")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    done = [r for by_n in results.values() for r in by_n.values() if "requests" in r]
    print(
        json.dumps(
            {
                "model": args.model,
                "defenses": {f"m:{s.partition(':')[0]}": s.replace(str(work), "<tmp>") for s in specs},
                "max_tokens": args.max_tokens,
                "image_size": args.image_size,
                "rounds": args.rounds,
                "per_client": args.per_client,
                "min_requests": args.min_requests,
                "server": {
                    "max_batch_size": args.max_batch_size,
                    "max_queue": args.max_queue,
                    "torch_threads": args.threads,
                    "request_timeout_s": args.request_timeout,
                },
                "cpu_count": os.cpu_count(),
                "results": results,
                "streaming_n1": streaming,
                "throughput_n32_over_n1": speedup,
                "target_n32_over_n1": 4.0,
                "lost_total": sum(r["lost"] for r in done),
                "corrupted_total": sum(r["corrupted"] for r in done),
                "rate_limited_total": sum(r["rate_limited"] for r in done),
                "server_rss_after_start_mb": rss_start,
                "server_peak_rss_mb": peak,
                "server_exit_code": code,
                "wall_s": round(time.monotonic() - t_start, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
