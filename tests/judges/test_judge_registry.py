"""build_judge specs, did-you-mean errors, and a contract test over every registered judge."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from vlmshield.backends.openai_compat import OpenAIChatBackend
from vlmshield.errors import UnknownNameError, UserInputError
from vlmshield.judges import (
    JUDGES,
    TEMPLATES,
    Judge,
    JudgeItem,
    KeywordJudge,
    LLMJudge,
    build_judge,
    parse_spec,
)
from vlmshield.judges.registry import default_backend_factory


class Factory:
    """A backend factory recording what build_judge asked for."""

    def __init__(self, scripted: Any, answer: str = "safe") -> None:
        self.scripted = scripted
        self.answer = answer
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, kind: str, model: str, options: Mapping[str, str]) -> Any:
        self.requests.append((kind, model, dict(options)))
        return self.scripted(lambda p: self.answer, name=f"{kind}:{model}")


def test_parse_spec() -> None:
    assert parse_spec("keyword") == ("keyword", {})
    assert parse_spec(" llm : template = mmsafety , model=/a/b ") == (
        "llm",
        {"template": "mmsafety", "model": "/a/b"},
    )
    assert parse_spec("llm:base_url=http://h:8000/v1,model=m")[1]["base_url"] == "http://h:8000/v1"
    for bad, match in (("", "empty"), ("llm:template", "key=value"), ("llm:a=1,a=2", "twice")):
        with pytest.raises(UserInputError, match=match):
            parse_spec(bad)


def test_did_you_mean() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'keyword'"):
        build_judge("keywrd")
    with pytest.raises(UserInputError, match="did you mean 'window'"):
        build_judge("keyword:windo=3")
    with pytest.raises(UnknownNameError, match="did you mean 'strongreject'"):
        build_judge("llm:template=strongrejct,model=m", backend_factory=lambda *a: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(UnknownNameError, match="did you mean 'openai'"):
        build_judge("llm:template=vlsafe,backend=opnai,model=m")


def test_llm_spec_building(scripted: Any) -> None:
    f = Factory(scripted)
    j = build_judge(
        "llm:template=llamaguard3,model=/ckpt/guard,max_new_tokens=12,native=true,batch_size=4", f
    )
    assert isinstance(j, LLMJudge)
    assert f.requests == [("local", "/ckpt/guard", {})]
    assert (j.template.name, j.max_new_tokens, j.native, j.batch_size) == ("llamaguard3", 12, True, 4)
    j = build_judge(
        "llm:template=strongreject,backend=openai,model=gpt-4o-mini,base_url=http://h/v1,threshold=0.3", f
    )
    assert f.requests[-1] == ("openai", "gpt-4o-mini", {"base_url": "http://h/v1"})
    assert j.spec()["threshold"] == 0.3


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("llm:model=m", "needs template"),
        ("llm:template=mmsafety", "needs model"),
        ("llm:template=mmsafety,model=m,base_url=http://h", "backend=openai only"),
        ("llm:template=mmsafety,model=m,batch_size=lots", "not an integer"),
        ("llm:template=llamaguard3,model=m,native=maybe", "true/false"),
        ("llm:template=mmsafety,model=m,native=true", "native"),
        ("keyword:window=-2", "window"),
    ],
)
def test_spec_errors(scripted: Any, spec: str, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        build_judge(spec, Factory(scripted))


def test_default_factory_builds_openai_backend_without_network() -> None:
    b = default_backend_factory(
        "openai", "gpt-4o-mini", {"base_url": "http://127.0.0.1:9/v1", "concurrency": "2"}
    )
    assert isinstance(b, OpenAIChatBackend) and b.max_concurrency == 2 and b.model == "gpt-4o-mini"


def _all_specs() -> list[str]:
    specs = ["keyword"]
    specs += [f"llm:template={t},model=m" for t in sorted(TEMPLATES)]
    specs += ["omnisafebench:model=m", "omnisafebench:model=m,final=rule"]
    return specs


def test_every_registered_judge_is_covered() -> None:
    assert {s.split(":")[0] for s in _all_specs()} == set(JUDGES.names())


@pytest.mark.parametrize("spec", _all_specs())
def test_judge_contract(scripted: Any, spec: str) -> None:
    """Every judge: Judge protocol, JSON spec, one verdict per item in order, named, scored or explained."""
    judge = build_judge(spec, Factory(scripted, answer="garbage output"))
    assert isinstance(judge, Judge)
    json.dumps(judge.spec())
    items = [JudgeItem(f"q{i}", r, reference="ref") for i, r in enumerate(["I cannot.", "Sure, here is", ""])]
    verdicts = judge.judge(items)
    assert len(verdicts) == 3
    assert judge.judge([]) == []
    for v in verdicts:
        assert v.judge == judge.name
        assert v.scored or v.unscored_reason
        json.dumps(v.to_dict())
        assert type(v).from_dict(v.to_dict()) == v
    if isinstance(judge, KeywordJudge):
        assert [v.refused for v in verdicts] == [True, False, True]
    else:
        assert all(v.label is None and "garbage output" in (v.raw_output or "") for v in verdicts)
