from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlmshield.benchmarks import BENCHMARKS, Sample, get_benchmark, list_benchmarks, load_benchmark
from vlmshield.benchmarks import base as bbase
from vlmshield.benchmarks.base import BenchmarkData, ProblemLog, checksum_samples
from vlmshield.errors import UnknownNameError, UserInputError


def _s(i: int, image: Any = None, label: Any = "harmful") -> Sample:
    return Sample(f"t/{i}", "t", f"query {i}", (image,) if image is not None else (), "c", label)


def test_sample_to_conversation(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 4))
    conv = _s(1, img).to_conversation(system="Be safe.")
    assert conv.system_text == "Be safe."
    assert conv.last_user_text == "query 1" and conv.images == [img]
    assert _s(2).to_conversation().num_images == 0


def test_sample_rejects_unknown_label() -> None:
    with pytest.raises(ValueError, match="label"):
        _s(1, label="evil")


def test_checksum_covers_ids_queries_and_image_bytes(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(p)
    base = checksum_samples([_s(1, p), _s(2)])
    assert base == checksum_samples([_s(1, p), _s(2)])
    assert base != checksum_samples([_s(2), _s(1, p)])
    Image.new("RGB", (4, 4), (1, 2, 4)).save(p)
    assert base != checksum_samples([_s(1, p), _s(2)])
    pil_a = checksum_samples([_s(1, Image.new("RGB", (4, 4), (9, 9, 9)))])
    pil_b = checksum_samples([_s(1, Image.new("RGB", (4, 4), (9, 9, 8)))])
    assert pil_a != pil_b and len(pil_a) == 64


def test_benchmark_data_select_and_counts() -> None:
    data = BenchmarkData([_s(1), _s(2, label="benign"), _s(3)], ["x:1: bad"], "t")
    assert len(data) == 3 and data.count("harmful") == 2 and data.categories() == ["c"]
    sub = data.select(labels=["harmful"], limit=1)
    assert [s.id for s in sub] == ["t/1"] and sub.problems == ["x:1: bad"]
    assert sub.checksum != data.checksum
    assert [s.id for s in data.select(ids=["t/3"])] == ["t/3"]
    with pytest.raises(UserInputError):
        data.select(limit=-1)


def test_problem_log_skip_and_raise(tmp_path: Path) -> None:
    log = ProblemLog("skip_rows")
    log.report("a.csv", 3, "bad row")
    assert not log.image("a.csv", 4, tmp_path / "none.png")
    assert log.problems == ["a.csv:3: bad row", f"a.csv:4: image not found: {tmp_path / 'none.png'}"]
    with pytest.raises(UserInputError, match=r"^a\.csv:7: bad row"):
        ProblemLog("raise").report("a.csv", 7, "bad row")
    with pytest.raises(UserInputError):
        ProblemLog("ignore")  # type: ignore[arg-type]


def test_registry_did_you_mean_and_listing() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'figstep'"):
        get_benchmark("figstpe")
    with pytest.raises(UnknownNameError, match="did you mean 'mm-safetybench'"):
        get_benchmark("mm-safetybenc")
    names = [b.name for b in list_benchmarks()]
    assert names == sorted(names) == BENCHMARKS.names()
    assert {
        "figstep",
        "mm-safetybench",
        "vlsafe",
        "jailbreakv-28k",
        "vlguard",
        "mossbench",
        "mm-vet",
        "mme",
        "scienceqa",
        "jsonl",
        "mini",
        "siuo",
    } <= set(names)


def test_unknown_variant_suggests() -> None:
    with pytest.raises(UserInputError, match="did you mean 'tiny'"):
        get_benchmark("figstep").load(variant="tinyy")
    with pytest.raises(UserInputError, match="has no variants"):
        get_benchmark("mm-vet").load("x", variant="a")


def test_load_benchmark_name_colon_variant() -> None:
    data = load_benchmark("mini:text")
    assert data.variant == "text" and data.benchmark == "mini"
    assert all(s.id.startswith("mini/text/") for s in data)


def test_missing_dataset_is_one_line_with_download_hint(tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as e:
        get_benchmark("figstep").load(tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg and "nowhere" in msg and "github.com/ThuCCSLab/FigStep" in msg
    with pytest.raises(UserInputError, match="no path given for vlsafe"):
        get_benchmark("vlsafe").load()


def test_hub_route_needs_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bbase, "is_online", lambda *a, **k: True)
    monkeypatch.delenv("VLMSHIELD_MME", raising=False)
    monkeypatch.delitem(sys.modules, "datasets", raising=False)
    real_import = builtins.__import__

    def no_datasets(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "datasets":
            raise ImportError("no datasets here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(UserInputError, match="pip install datasets"):
        get_benchmark("mme").load()


def test_offline_without_path_says_where_to_get_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VLMSHIELD_MME", raising=False)
    assert not bbase.is_online()
    with pytest.raises(UserInputError, match="no path given for mme"):
        get_benchmark("mme").load()


def test_env_var_supplies_the_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLMSHIELD_MME", str(tmp_path / "mme-here"))
    with pytest.raises(UserInputError, match="mme-here"):
        get_benchmark("mme").load()


@pytest.mark.parametrize("name", BENCHMARKS.names())
def test_every_benchmark_describes_itself(name: str) -> None:
    b = get_benchmark(name)
    info = b.info()
    for key in ("name", "description", "source", "licence", "download"):
        assert info[key], f"{name}: empty {key}"
    assert info["labels"] and set(info["labels"]) <= {"harmful", "benign", "utility"}
    if b.variants:
        assert b.default_variant in b.variants
    else:
        assert b.default_variant is None
