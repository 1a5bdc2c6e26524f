"""Scale options: memory budgets and device maps as text, where each rank's model goes, and the refusal
of white-box defenses on a remote model (before anything connects)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmshield.errors import UserInputError
from vlmshield.eval import EvalConfig, build_plan
from vlmshield.eval.scale import (
    Placement,
    ScaleOptions,
    local_only,
    parse_device_map,
    parse_max_memory,
    placement_for_rank,
    scale_options,
)

GiB = 1 << 30


def test_max_memory_forms() -> None:
    assert parse_max_memory("20GiB") == {"gpu": "20GiB"}
    assert parse_max_memory("0=20GiB, 1=22GiB,cpu=64GiB") == {0: "20GiB", 1: "22GiB", "cpu": "64GiB"}
    assert parse_max_memory("gpu=30GB,cpu=1000") == {"gpu": "30GB", "cpu": "1000"}
    for bad, message in [("lots", "bad size"), ("tpu=3GiB", "unknown device"), (",", "empty")]:
        with pytest.raises(UserInputError, match=message):
            parse_max_memory(bad)


def test_device_map_forms(tmp_path: Path) -> None:
    assert parse_device_map("auto") == "auto"
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"model.language_model.layers.0": 0, "lm_head": "cpu"}))
    assert parse_device_map(str(f)) == {"model.language_model.layers.0": 0, "lm_head": "cpu"}
    assert parse_device_map('{"": "cpu"}') == {"": "cpu"}
    for bad, message in [
        ("automatic", "use one of auto"),
        ("{nope", "not valid JSON"),
        ("[1]", "use one of"),
    ]:
        with pytest.raises(UserInputError, match=message):
            parse_device_map(bad)
    with pytest.raises(UserInputError, match="invalid scale options: concurrency"):
        scale_options(concurrency=0)
    with pytest.raises(UserInputError, match="bad size"):
        scale_options(max_memory="20 gigs")


def _place(opts: ScaleOptions, device: str = "auto", **kw: int) -> Placement:
    args = {"local_rank": 0, "local_world_size": 1, "world_size": 1, "cuda_count": 0} | kw
    return placement_for_rank(opts, device, free_bytes=lambda i: (10 + i) * GiB, **args)


def test_one_device_per_rank() -> None:
    plain = ScaleOptions()
    assert _place(plain).device == "cpu"
    assert _place(plain, cuda_count=1).device == "cuda"
    p = _place(plain, local_rank=3, local_world_size=8, world_size=16, cuda_count=8)
    assert (p.device, p.device_map, p.gpus) == ("cuda:3", None, (3,))
    assert _place(plain, "cpu", local_rank=1, local_world_size=2, world_size=2, cuda_count=2).device == "cpu"
    with pytest.raises(UserInputError, match="local rank 2 has no GPU"):
        _place(plain, local_rank=2, local_world_size=4, world_size=4, cuda_count=2)


def test_groups_of_gpus_per_rank() -> None:
    # 8 GPUs = 4 ranks x 2 GPUs: local rank 1 takes GPUs 2 and 3, 90% of their free memory, nothing else
    p = _place(ScaleOptions(gpus_per_rank=2), local_rank=1, local_world_size=4, world_size=4, cuda_count=8)
    assert p.device == "cuda:2" and p.device_map == "auto" and p.gpus == (2, 3)
    assert p.max_memory == {2: int(12 * GiB * 0.9), 3: int(13 * GiB * 0.9)}
    # --device-map auto alone under a launcher: the node's GPUs shared evenly; budgets per GPU of the
    # rank's group (0 = the group's first) and for the CPU
    opts = ScaleOptions(device_map="balanced", max_memory="0=20GiB,gpu=30GiB,cpu=64GiB")
    p = _place(opts, local_rank=1, local_world_size=2, world_size=4, cuda_count=8)
    assert p.gpus == (4, 5, 6, 7) and p.device_map == "balanced"
    assert p.max_memory == {4: "20GiB", 5: "30GiB", 6: "30GiB", 7: "30GiB", "cpu": "64GiB"}
    with pytest.raises(UserInputError, match="needs GPUs 8-11"):
        _place(ScaleOptions(gpus_per_rank=4), local_rank=2, local_world_size=3, world_size=3, cuda_count=8)
    # no GPU: a device map with a CPU budget (the rest offloaded to disk)
    p = _place(ScaleOptions(device_map="auto", max_memory="cpu=300KB"))
    assert (p.device, p.device_map, p.max_memory) == ("cpu", "auto", {"cpu": "300KB"})


def test_white_box_defenses_are_refused_on_a_remote_model_before_anything_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("VLMSHIELD_OPENAI_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert local_only("coca") and local_only("cmrm") and local_only("adashield+coca")
    assert not local_only("none") and not local_only("ecso")
    url = "http://127.0.0.1:9/v1"  # nothing listens there: the checks must not connect
    remote = {"model": "openai:tiny", "benchmarks": ["mini:text"], "scale": ScaleOptions(base_url=url)}
    plan = build_plan(EvalConfig(**remote, defenses=["none", "ecso"]))  # type: ignore[arg-type]
    assert [d.label for d in plan.defenses] == ["none", "ecso"]
    for defenses, message in [
        (["coca"], "defense 'coca' needs the model's logits and hidden states"),
        (["ecso", "cmrm:level=sample"], "defense 'cmrm' needs"),
        (["ecso:check_parse=logits"], "check_parse=logits needs a local model"),
    ]:
        with pytest.raises(UserInputError, match=message) as e:
            build_plan(EvalConfig(**remote, defenses=defenses))  # type: ignore[arg-type]
        assert "\n" not in str(e.value)
    with pytest.raises(UserInputError, match="needs an endpoint"):
        build_plan(EvalConfig(model="openai:tiny", benchmarks=["mini:text"], defenses=["none"]))
    with pytest.raises(UserInputError, match="--base-url is for a remote model"):
        build_plan(EvalConfig(model="demo", benchmarks=["mini:text"], scale=ScaleOptions(base_url=url)))
