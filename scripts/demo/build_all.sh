#!/usr/bin/env bash
# Rebuild the demo VLM's artifacts from scratch (v2f, the shipped recipe), then measure them (one CPU
# thread per job). Run from the repository root. Intermediate data goes to .cache/demo-build/
# (git-ignored); every step resumes where it stopped. Stage 2 starts from a new vision tower: move an
# old vision.safetensors away.
set -euo pipefail
export PYTHONPATH=scripts/demo
PY=.venv/bin/python
B=.cache/demo-build
$PY scripts/demo/check_overlap.py                 # training prompts vs mini / SafeBench
$PY scripts/demo/gen_answers.py                   # base-model answers, cached JSONL (~10 min)
$PY scripts/demo/train_text.py --epochs 3         # stage 1: text safety LoRA + judgements (~19 min)
$PY scripts/demo/mine_lookalikes.py --pool all --out $B/mined.json   # hard look-alikes (~4 min)
$PY scripts/demo/gen_answers.py --mined $B/mined.json                # base answers to the mined ones
# stage 2, LM frozen, the mined look-alikes weighted x6 (~30 min)
$PY scripts/demo/train_vision.py --mined $B/mined.json --proj-lr 3e-3 --tower-lr 1e-3 \
    --mined-repeat 6 --epochs 1.25
$PY scripts/demo/calibrate_cmrm.py                # CMRM dataset-level vectors (sequential)
$PY scripts/demo/story.py                         # the story table (vlmshield eval runs, ~15 min)
$PY scripts/demo/ecso_check.py                    # ECSO's check flag rates
