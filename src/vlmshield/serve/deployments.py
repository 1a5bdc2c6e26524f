"""Deployments: the model ids a server answers, each the served model with one defense (or none).

``M`` is the undefended model (only when the operator allows it); ``M:<name>`` answers through the
defense configured under that name. Per-request defense arguments build a variant of the defense
(cached, at most :data:`MAX_VARIANTS` per deployment), limited to the deployment's allow-list.

Example:
    >>> from vlmshield.serve.settings import parse_deployment
    >>> deps = build_deployments("M", [parse_deployment("coca:alpha=1")], allow_undefended=True)
    >>> [d.model_id for d in deps]
    ['M', 'M:coca']
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from vlmshield.backends.base import ChatBackend
from vlmshield.conversation import Conversation
from vlmshield.defenses import DEFENSES, Defense, parse_defense_spec
from vlmshield.errors import UserInputError
from vlmshield.generation import GenerationConfig
from vlmshield.models import VLM
from vlmshield.serve.batching import Job, RowResult
from vlmshield.serve.settings import DeploymentSpec

#: Defenses whose answer is the row of a single ``generate`` call holding the request's own
#: conversation: these stream token by token (see :mod:`vlmshield.serve.streaming`).
INCREMENTAL_DEFENSES = frozenset({"none", "coca", "cmrm"})
#: Cached per-request variants per deployment.
MAX_VARIANTS = 32
#: Detail keys never returned to clients: the answer a defense replaced, its judge's raw output,
#: the operator's principle and templates, costs.
_HIDDEN_DETAIL_WORDS = ("answer", "output", "principle", "prompt", "template", "cost")


def public_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """The intermediates a client may see: scalar values whose key names no hidden thing.

    Example:
        >>> public_details({"flagged": True, "caption": "a cat", "first_answer": "...", "cost": {}})
        {'flagged': True, 'caption': 'a cat'}
    """
    return {
        k: v
        for k, v in details.items()
        if isinstance(v, str | int | float | bool | type(None))
        and not any(w in k for w in _HIDDEN_DETAIL_WORDS)
    }


class Deployment:
    """One served model id."""

    def __init__(self, model_id: str, spec: DeploymentSpec | None) -> None:
        self.model_id = model_id
        self.spec = spec
        self.defense: Defense | None = None
        self.base_args: dict[str, Any] = {}
        self.defense_name = "none"
        if spec is not None:
            self.defense_name, self.base_args = parse_defense_spec(spec.defense)
            self.defense = DEFENSES.get(self.defense_name)(**self.base_args)
            known = set(self.defense.spec()) - {"name"}
            unknown = [p for p in spec.allow_params if p not in known]
            if unknown:
                raise UserInputError(
                    f"--allow-param {spec.name}.{unknown[0]}: {self.defense_name} has no argument "
                    f"{unknown[0]!r} (known: {', '.join(sorted(known))})"
                )
        self.allow_params: tuple[str, ...] = spec.allow_params if spec else ()
        self._variants: OrderedDict[Hashable, Defense] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def incremental(self) -> bool:
        """Whether streams of this deployment go token by token."""
        return self.defense_name in INCREMENTAL_DEFENSES

    def describe(self) -> dict[str, Any]:
        return {"id": self.model_id, "defense": self.defense.spec() if self.defense else {"name": "none"}}

    def variant(self, params: Mapping[str, Any]) -> tuple[Hashable, Defense | None]:
        """The defense for these per-request arguments, and a key batching them apart from others."""
        if not params:
            return (), self.defense
        if self.defense is None:
            raise UserInputError(f"model {self.model_id!r} has no defense, so it takes no defense_params")
        refused = [k for k in params if k not in self.allow_params]
        if refused:
            allowed = ", ".join(self.allow_params) or "none"
            raise UserInputError(
                f"defense_params {refused[0]!r} is not allowed for model {self.model_id!r} (allowed: {allowed})"
            )
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        with self._lock:
            if key in self._variants:
                self._variants.move_to_end(key)
                return key, self._variants[key]
        built = DEFENSES.get(self.defense_name)(**{**self.base_args, **params})
        with self._lock:
            self._variants[key] = built
            while len(self._variants) > MAX_VARIANTS:
                self._variants.popitem(last=False)
        return key, built


def build_deployments(
    model_name: str, specs: Sequence[DeploymentSpec], *, allow_undefended: bool
) -> list[Deployment]:
    """The deployments in ``/v1/models`` order: ``model_name`` (if allowed), then one per spec."""
    out: list[Deployment] = []
    if allow_undefended:
        out.append(Deployment(model_name, None))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise UserInputError(
                f"two defenses are named {spec.name!r}; name them apart, e.g. --defense strict=coca:alpha=4"
            )
        seen.add(spec.name)
        dep = Deployment(f"{model_name}:{spec.name}", spec)
        if dep.defense_name == "none" and not allow_undefended:
            raise UserInputError(
                f"--defense {spec.defense!r} serves the model undefended; pass --allow-undefended to allow it"
            )
        out.append(dep)
    if not out:
        raise UserInputError(
            "nothing to serve: give --defense SPEC (e.g. --defense coca) or pass --allow-undefended"
        )
    return out


def run_jobs(backend: ChatBackend, jobs: list[Job]) -> list[RowResult]:
    """Answer compatible jobs (one deployment, one variant, one config) with one batched call."""
    convs = [j.conv for j in jobs]
    config = jobs[0].config
    defense: Defense | None = jobs[0].payload
    if defense is None:
        out = backend.generate(convs, config)
        if len(out.texts) != len(jobs):
            raise RuntimeError(f"backend returned {len(out.texts)} rows for {len(jobs)} conversations")
        rows = []
        for i in range(len(jobs)):
            finished = out.finished[i] if i < len(out.finished) else True
            rows.append(
                RowResult(
                    text=out.texts[i],
                    token_ids=list(out.token_ids[i]) if i < len(out.token_ids) else [],
                    finish_reason="stop" if finished else "length",
                    prompt_tokens=int(out.num_prompt_tokens[i]) if i < len(out.num_prompt_tokens) else 0,
                    completion_tokens=int(out.num_new_tokens[i]) if i < len(out.num_new_tokens) else 0,
                )
            )
        return rows
    results = defense.generate(backend, convs, config)  # type: ignore[arg-type]
    rows = []
    for job, res in zip(jobs, results, strict=True):
        # a local model stops a row at max_new_tokens or at EOS (which it counts as a new token)
        length = len(res.token_ids) >= config.max_new_tokens
        rows.append(
            RowResult(
                text=res.text,
                token_ids=list(res.token_ids),
                finish_reason="length" if length else "stop",
                prompt_tokens=job.prompt_tokens if job.prompt_tokens is not None else res.cost.prompt_tokens,
                completion_tokens=len(res.token_ids) + (0 if length else 1),
                details=dict(res.details),
            )
        )
    return rows


class PromptCounter:
    """Counts a request's prompt tokens (image tokens included) exactly as the model will see them.

    Uses its own copy of the processor, so the request threads never share tokenizer state with the
    worker thread; one count at a time.
    """

    def __init__(self, vlm: VLM) -> None:
        self._vlm = copy.copy(vlm)
        self._vlm.processor = copy.deepcopy(vlm.processor)
        self._lock = threading.Lock()

    def count(self, conv: Conversation) -> int:
        with self._lock:
            return int(self._vlm.encode([conv])["input_ids"].shape[1])


def warm_up(backend: ChatBackend, deployments: Sequence[Deployment]) -> None:
    """Answer one tiny request per deployment, so a misconfigured defense fails at startup."""
    from PIL import Image

    conv = Conversation.single("Hello.", images=[Image.new("RGB", (32, 32), (128, 128, 128))])
    cfg = GenerationConfig(max_new_tokens=2)
    for dep in deployments:
        job = Job(conv=conv, config=cfg, key=(), model=dep.model_id, payload=dep.defense)
        try:
            run_jobs(backend, [job])
        except UserInputError as e:
            raise UserInputError(f"model id {dep.model_id!r} failed its warm-up request: {e}") from None
