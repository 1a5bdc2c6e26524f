"""The run manifest (``manifest.json``): everything needed to reproduce or resume a run.

It records software versions, seeds, the model (name, revision, dtype), every defense's full spec,
every judge's spec (template hashes included), the benchmarks with their checksums, the sample list's
hash, the generation settings and each command line that worked on the run.

The *identity* of a run is the part that decides its results: model and revision, dtype, defense
specs, benchmark checksums and sample selection, generation settings and batch size. Resuming into a
folder whose identity differs is refused (:func:`check_resumable`); adding a judge is allowed, changing
the spec of a judge that already judged is not.

Example:
    >>> old = {"identity": {"model": {"name": "a"}}}
    >>> check_resumable(old, {"identity": {"model": {"name": "b"}}}, "runs/x")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    UserInputError: runs/x holds a run with different settings (model.name: 'a' -> 'b'); ...
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmshield.errors import UserInputError

if TYPE_CHECKING:
    from vlmshield.eval.plan import EvalPlan

MANIFEST_NAME = "manifest.json"
SCHEMA = "vlmshield.eval.manifest/1"
_FULL_HASH_LIMIT = 64 << 20  # weight files up to 64 MiB are hashed whole
_EDGE = 1 << 20  # larger ones: size + first and last MiB


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str | None]:
    """Versions of vlmshield, python, torch, transformers and friends (``None`` when missing)."""
    import vlmshield

    out: dict[str, str | None] = {
        "vlmshield": vlmshield.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for mod in ("torch", "transformers", "tokenizers", "numpy", "pillow"):
        try:
            m = __import__("PIL" if mod == "pillow" else mod)
            out[mod] = str(getattr(m, "__version__", None))
        except ImportError:
            out[mod] = None
    return out


def sha256_json(obj: Any) -> str:
    from vlmshield.eval.store import to_json

    return hashlib.sha256(to_json(obj).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f"size:{size}".encode())
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def fingerprint_dir(path: str | os.PathLike[str]) -> str:
    """A revision for a local checkpoint: sha256 over ``config.json`` and the weight files (whole files
    up to 64 MiB; larger ones by size and their first and last MiB)."""
    p = Path(path)
    h = hashlib.sha256()
    cfg = p / "config.json"
    if cfg.is_file():
        h.update(b"config:" + cfg.read_bytes())
    for f in sorted(p.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".gguf", ".pt"):
            h.update(f"{f.name}:{_file_digest(f)}".encode())
    return "sha256:" + h.hexdigest()


def model_revision(vlm: Any) -> str:
    """The loaded model's revision: the hub commit (``config._commit_hash``) when known, else a
    fingerprint of its local folder, else a hash of its config."""
    cfg = vlm.model.config
    commit = getattr(cfg, "_commit_hash", None)
    if commit:
        return str(commit)
    src = getattr(cfg, "_name_or_path", None) or getattr(vlm, "name", None)
    if src and Path(str(src)).is_dir():
        return fingerprint_dir(str(src))
    return "config-sha256:" + hashlib.sha256(cfg.to_json_string().encode()).hexdigest()


def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of ``run_dir`` (``None`` when there is none yet)."""
    p = Path(run_dir) / MANIFEST_NAME
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserInputError(f"{p} is not a readable manifest ({e}); pass a new --output-dir") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UserInputError(f"{p} is not a vlmshield eval manifest ({SCHEMA}); pass a new --output-dir")
    return data


def write_manifest(run_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (temporary file + rename)."""
    p = Path(run_dir) / MANIFEST_NAME
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True, default=str) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def identity_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], *, skip: tuple[str, ...] = ()
) -> list[str]:
    """``key: old -> new`` for every identity field that differs (keys under ``skip`` ignored)."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == s or key.startswith(s + ".") for s in skip):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {_short(a.get(key))} -> {_short(b.get(key))}")
    return diffs


def check_resumable(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    run_dir: str | os.PathLike[str],
    *,
    skip: tuple[str, ...] = (),
) -> None:
    """Raise a one-line :class:`UserInputError` when ``old`` and ``new`` differ in identity or in the
    spec of a judge they share."""
    diffs = identity_differences(old.get("identity", {}), new.get("identity", {}), skip=skip)
    old_j = {j["label"]: j.get("spec") for j in old.get("judges", [])}
    for j in new.get("judges", []):
        if j["label"] in old_j and old_j[j["label"]] != j.get("spec"):
            diffs.append(f"judge {j['label']}: spec changed")
    if diffs:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise UserInputError(
            f"{run_dir} holds a run with different settings ({shown}); pass a new --output-dir to start "
            "a new run (or repeat the original arguments to resume it)"
        )


def command_line(argv: list[str] | None = None) -> str:
    import shlex

    return shlex.join(argv if argv is not None else [Path(sys.argv[0]).name, *sys.argv[1:]])


# ------------------------------------------------------------------------------------- a run's manifest


def recorded_order(old: Mapping[str, Any] | None) -> str | None:
    """The batch order an existing manifest records (``dataset`` for runs made before orders existed)."""
    if old is None:
        return None
    return str(old.get("identity", {}).get("generation", {}).get("order") or "dataset")


def with_order(old: Mapping[str, Any]) -> dict[str, Any]:
    """``old`` with its batch order spelled out (an older manifest's batches were in dataset order)."""
    out = json.loads(json.dumps(old, default=str))
    gen = out.setdefault("identity", {}).setdefault("generation", {})
    gen.setdefault("order", recorded_order(old))
    return out


def _identity(plan: EvalPlan, order: str, model_revision: str | None, dtype: str | None) -> dict[str, Any]:
    cfg = plan.config
    return {
        "model": {"name": cfg.model, "revision": model_revision, "dtype": dtype},
        "generation": {
            "max_new_tokens": cfg.max_new_tokens,
            "do_sample": False,
            "batch_size": cfg.rows_per_batch,
            "order": order,
        },
        "seed": cfg.seed,
        "defense_order": [d.label for d in plan.defenses],
        "defenses": {d.label: d.spec() for d in plan.defenses},
        "benchmarks": {
            b.request.label: {
                "variant": b.variant,
                "checksum": b.checksum,
                "selection_checksum": b.selection_checksum,
            }
            for b in plan.benchmarks
        },
        "samples": {"count": len(plan.samples), "ids_sha256": plan.sample_ids_sha256()},
    }


def build_manifest(
    plan: EvalPlan,
    *,
    order: str,
    model_revision: str | None,
    dtype: str | None,
    device: str | None,
    family: str | None,
    model_extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a run of ``plan`` (``status: running``, no invocations yet)."""
    cfg = plan.config
    return {
        "schema": SCHEMA,
        "created": now_iso(),
        "versions": versions(),
        "identity": _identity(plan, order, model_revision, dtype),
        "model": {
            "name": cfg.model,
            "revision": model_revision,
            "requested_revision": cfg.revision,
            "family": family,
            "dtype": dtype,
            "device": device,
            **dict(model_extra or {}),
        },
        "seeds": {"seed": cfg.seed, "limit_selection": cfg.seed, "bootstrap": cfg.seed},
        "bootstrap": {"resamples": cfg.bootstrap_resamples, "level": 0.95, "method": "percentile"},
        "limit": cfg.limit,
        "generation": {
            "max_new_tokens": cfg.max_new_tokens,
            "do_sample": False,
            "batch_size": cfg.rows_per_batch,
            "order": order,
        },
        "scale": cfg.scale.model_dump(exclude={"order"}),
        "defenses": [
            {
                "label": d.label,
                "spec_text": d.spec_text,
                "spec": d.spec(),
                "spec_sha256": sha256_json(d.spec()),
            }
            for d in plan.defenses
        ],
        "judges": [
            {
                "label": j.label,
                "spec_text": j.spec_text,
                "spec": j.checked_spec,
                "spec_sha256": sha256_json(j.checked_spec),
            }
            for j in plan.judges
        ],
        "benchmarks": [b.manifest() for b in plan.benchmarks],
        "samples": {"count": len(plan.samples), "ids_sha256": plan.sample_ids_sha256()},
        "invocations": [],
        "status": "running",
    }


def merge_manifest(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` keeping ``old``'s creation time, invocations and judges no longer requested."""
    if old is None:
        return new
    merged = dict(new)
    merged["created"] = old.get("created", new["created"])
    merged["invocations"] = list(old.get("invocations", []))
    labels = {j["label"] for j in new["judges"]}
    merged["judges"] = new["judges"] + [j for j in old.get("judges", []) if j["label"] not in labels]
    return merged


__all__ = [
    "MANIFEST_NAME",
    "SCHEMA",
    "build_manifest",
    "check_resumable",
    "command_line",
    "fingerprint_dir",
    "identity_differences",
    "merge_manifest",
    "model_revision",
    "now_iso",
    "read_manifest",
    "recorded_order",
    "sha256_json",
    "versions",
    "with_order",
    "write_manifest",
]
