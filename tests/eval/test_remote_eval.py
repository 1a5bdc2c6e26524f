"""An eval against a real OpenAI-compatible server on 127.0.0.1 (``vlmshield serve``'s app over the tiny
checkpoint) equals the local eval of the same checkpoint for ``none`` and ``ecso``: same answers,
verdicts and safety figures; the remote run records its endpoint; API judges get the run's limits."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vlmshield.backends.openai_compat import OpenAIChatBackend
from vlmshield.eval import EvalConfig, RunStore, build_plan, run_eval
from vlmshield.eval.judging import build_judges
from vlmshield.eval.scale import ScaleOptions
from vlmshield.models import VLM

serve = pytest.importorskip("vlmshield.serve")

# ECSO's default check reads the logits of a local model and the first yes/no word of a remote one:
# the like-for-like comparison names the reading; force_flag=always runs all four steps remotely too
DEFENSES = ["ecso:check_parse=first_word", "ecso:check_parse=first_word,force_flag=always"]
SAFETY = (
    "n",
    "scored",
    "unsafe_rate",
    "ci",
    "refusal_rate",
    "refusal_ci",
    "over_refusal",
    "utility",
    "errors",
)


@pytest.fixture(scope="module")
def server(load_tiny: Callable[[str], VLM]) -> Iterator[str]:
    app = serve.create_app(load_tiny("llava"), "tiny", allow_undefended=True)
    with serve.ServerThread(app) as running:
        yield running.url


def _config(model: str, bench: Path, out: Path, **scale: Any) -> EvalConfig:
    return EvalConfig(
        model=model, benchmarks=[f"jsonl@{bench}"], defenses=list(DEFENSES), batch_size=2, max_new_tokens=4,
        output_dir=out, scale=ScaleOptions(**scale),
    )  # fmt: skip


def _answers(run: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    with RunStore(run / "results.sqlite") as s:
        gens, verdicts = s.generations(), s.verdicts()
    v = {(r["defense"], r["sample_id"]): (r["label"], r["unsafe"], r["refused"]) for r in verdicts}
    out = {}
    for g in gens:
        key = (g["defense"], g["sample_id"])
        d = g["details"] or {}
        steps = tuple(
            d.get(k) for k in ("first_answer", "check_output", "flagged", "caption", "final_answer")
        )
        out[key] = (g["text"], g["error"] is not None, steps, v.get(key))
    return out


@pytest.mark.slow
def test_a_remote_eval_equals_the_local_one(
    server: str, load_tiny: Callable[[str], VLM], tmp_path: Path, jsonl_benchmark: Path
) -> None:
    vlm = load_tiny("llava")
    local = run_eval(_config(vlm.name, jsonl_benchmark, tmp_path / "local"), vlm=vlm, progress=False)
    remote = run_eval(
        _config("openai:tiny", jsonl_benchmark, tmp_path / "remote", base_url=f"{server}/v1", concurrency=4),
        progress=False,
    )
    a, b = _answers(tmp_path / "local"), _answers(tmp_path / "remote")
    assert a == b and len(a) == 18  # 6 samples x (none + 2 ECSO specs)
    # with an image and forced: caption and text-only answer ran through the endpoint (no image: skipped)
    forced = [k for k in a if k[0] == DEFENSES[1] and not a[k][1] and not k[1].endswith("/h2")]
    assert len(forced) == 4 and all(a[k][2][2] is True and a[k][2][3] is not None for k in forced)
    assert sum(err for _, err, _, _ in a.values()) == 3  # the two-image sample fails on both sides
    for label in ("none", *DEFENSES):
        got, want = remote.summary["defenses"][label], local.summary["defenses"][label]
        assert {k: got[k] for k in SAFETY} == {k: want[k] for k in SAFETY}, label
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
    assert manifest["model"]["device"] == "remote" and manifest["model"]["endpoint"] == f"{server}/v1"
    assert manifest["model"]["served"]["id"] == "tiny"
    assert remote.summary["padding"] is None and local.summary["padding"] is not None
    with RunStore(tmp_path / "remote" / "results.sqlite") as s:
        assert all(g["token_ids"] in ([], None) for g in s.generations())  # the API gives text only


def test_an_unknown_served_model_is_one_line(server: str, tmp_path: Path, jsonl_benchmark: Path) -> None:
    from vlmshield.errors import UserInputError

    cfg = _config("openai:tiny-typo", jsonl_benchmark, tmp_path / "run", base_url=server)
    with pytest.raises(UserInputError, match=r"does not serve a model named 'tiny-typo' \(served: tiny"):
        run_eval(cfg, progress=False)


def test_api_judges_get_the_runs_concurrency_and_rate_limit(tmp_path: Path) -> None:
    judge = "llm:template=mmsafety,backend=openai,model=judge,base_url=http://127.0.0.1:9/v1"
    cfg = EvalConfig(
        model="demo", benchmarks=["mini:text"], defenses=["none"], judges=[judge, f"{judge},concurrency=3"],
        scale=ScaleOptions(judge_concurrency=12, judge_rate_limit=9.0),
    )  # fmt: skip
    plan = build_plan(cfg)
    for world, want in ((1, [(12, 9.0), (3, 9.0)]), (3, [(4, 3.0), (3, 3.0)])):
        judges = build_judges(plan, vlm=None, world_size=world)  # totals shared between ranks
        backends = [j.backend for _, j in judges]
        assert all(isinstance(b, OpenAIChatBackend) for b in backends)
        assert [(b.max_concurrency, b.max_requests_per_s) for b in backends] == want
