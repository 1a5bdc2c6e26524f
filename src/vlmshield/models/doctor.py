"""``diagnose``: will this checkpoint work with vlmshield's defenses? Checked without generating text.

For any checkpoint directory (a registered family or not) it loads the model on the CPU (or the
device you choose) and checks, in order: the architecture; the language model's decoder layers (or
how to pass ``layers_path``); the chat template with system, user and image turns; that a text-only
and an image input both encode, and where the image tokens are; one forward pass; then what each
defense needs: a two-branch batch whose rows equal the rows alone (CoCA), hooks on every decoder layer
that change the logits and come off cleanly (CMRM), and a short text-only generation (ECSO's last
step). A check that needs an earlier one that failed is skipped, with the reason.

Example:
    >>> report = diagnose("checkpoints/tiny-llava")  # doctest: +SKIP
    >>> report.ok, [c.name for c in report.checks if not c.ok]  # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image
from torch import nn

from vlmshield.conversation import Conversation
from vlmshield.errors import ModelLoadError

if TYPE_CHECKING:
    from vlmshield.models.adapter import VLM

Status = Literal["ok", "fail", "skip"]

#: Marker texts the chat-template check looks for in the rendered prompt.
SYSTEM_MARK = "Answer like a careful doctor."
USER_MARK = "What does this picture show?"


@dataclass
class Check:
    """One line of the report: ``name``, ``status`` (ok / fail / skip) and a one-line ``detail``."""

    name: str
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Report:
    """What :func:`diagnose` found. ``ok`` is True only when every check passed."""

    model: str
    model_type: str | None = None
    family: str | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: model, model_type, family, ok and the checks (with ``ok`` per check)."""
        return {
            "model": self.model,
            "model_type": self.model_type,
            "family": self.family,
            "ok": self.ok,
            "checks": [{**asdict(c), "ok": c.ok} for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _image() -> Image.Image:
    """A small deterministic non-square test image."""
    return Image.effect_noise((48, 40), 64).convert("RGB")


def layer_path_candidates(model: nn.Module) -> list[tuple[str, int]]:
    """Attribute paths of ``nn.ModuleList`` s that look like a language model's decoder layers (not
    under a vision tower), with their length, longest first: what to pass as ``layers_path``.

    Example:
        >>> layer_path_candidates(vlm.model)[:1]  # doctest: +SKIP
        [('language_model.model.decoder.layers', 32)]
    """
    found = []
    for name, module in model.named_modules():
        lowered = name.lower()
        if not isinstance(module, nn.ModuleList) or not name or len(module) < 1:
            continue
        if any(w in lowered for w in ("vision", "visual", "image", "vit", "encoder", "qformer", "perceiver")):
            continue
        if not name.endswith(("layers", "layer", "blocks", "h")):
            continue
        found.append((name, len(module)))
    return sorted(found, key=lambda x: -x[1])


class _Doctor:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.failed: set[str] = set()

    def run(self, name: str, needs: tuple[str, ...], fn: Callable[[], str]) -> None:
        missing = [n for n in needs if n in self.failed]
        if missing:
            self.report.checks.append(Check(name, "skip", f"needs {', '.join(missing)}"))
            self.failed.add(name)
            return
        try:
            detail = fn()
        except Exception as e:  # every failure is a line of the report
            self.report.checks.append(Check(name, "fail", _first_line(e)))
            self.failed.add(name)
        else:
            self.report.checks.append(Check(name, "ok", detail))


def diagnose(
    model: str | Path | VLM,
    *,
    layers_path: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
) -> Report:
    """Check what vlmshield needs from the checkpoint at ``model`` (see the module docs).

    ``model`` may also be an already loaded :class:`VLM` (then ``layers_path``, ``device`` and
    ``dtype`` are its own).

    Raises:
        ModelLoadError: ``model`` is not a directory with a ``config.json``.

    Example:
        >>> report = diagnose("checkpoints/my-vlm", layers_path="model.decoder.layers")  # doctest: +SKIP
        >>> print(report.to_json())  # doctest: +SKIP
    """
    from vlmshield.models.adapter import VLM
    from vlmshield.models.families import FAMILIES
    from vlmshield.models.loading import _read_model_type, load_vlm

    state: dict[str, Any] = {}
    if isinstance(model, VLM):
        state["vlm"] = model
        report = Report(model=model.name, model_type=model.family)
    else:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"{model} is not a checkpoint directory (doctor checks a local checkpoint)")
        report = Report(model=str(model), model_type=_read_model_type(path))
    doc = _Doctor(report)
    family = FAMILIES.get(report.model_type or "")

    def architecture() -> str:
        vlm = state.get("vlm") or load_vlm(str(path), device=device, dtype=dtype, layers_path=layers_path)
        state["vlm"] = vlm
        report.family = vlm.family
        arch = type(vlm.model).__name__
        if family is None:
            return f"{arch} ({report.model_type}): not a registered family, the generic path is used"
        if family.status != "supported":
            raise ModelLoadError(f"{family.display}: {family.status}")
        note = "" if family.mixed_batches_exact else " (rows without an image are not exact in mixed batches)"
        return f"{arch}: {family.display}{note}"

    doc.run("architecture", (), architecture)
    vlm: VLM | None = state.get("vlm")
    needs_model = ("architecture",)

    def layers() -> str:
        assert vlm is not None
        try:
            found = vlm.decoder_layers()
        except ModelLoadError:
            cands = layer_path_candidates(vlm.model)
            hint = "; candidates: " + ", ".join(f"{n} ({k} layers)" for n, k in cands[:3]) if cands else ""
            raise ModelLoadError(
                f"decoder layers not found at {', '.join(vlm.info.layer_paths)}: pass --layers-path "
                f"(Python: load_vlm(..., layers_path=...)){hint}"
            ) from None
        where = vlm.layers_path or next(
            (p for p in vlm.info.layer_paths if _resolves(vlm.model, p)), "the family's path"
        )
        return f"{len(found)} decoder layers at {where}, hidden size {vlm.hidden_size}"

    doc.run("decoder layers", needs_model, layers)

    image = _image()
    conv = Conversation.single(USER_MARK, images=[image], system=SYSTEM_MARK)

    def template() -> str:
        assert vlm is not None
        if not getattr(vlm.processor, "chat_template", None):
            raise ModelLoadError(
                "the processor has no chat template: add chat_template.jinja to the checkpoint (the "
                "prompt format cannot be guessed)"
            )
        with_image, text_only = vlm.render(conv), vlm.render(conv.text_only())
        missing = [n for n, mark in (("system", SYSTEM_MARK), ("user", USER_MARK)) if mark not in with_image]
        if missing:
            raise ModelLoadError(f"the rendered prompt lacks the {' and '.join(missing)} turn's text")
        if with_image == text_only:
            raise ModelLoadError("the rendered prompt has no placeholder for the image")
        return "system, user and image turns render"

    doc.run("chat template", needs_model, template)

    def text_only() -> str:
        assert vlm is not None
        inputs = vlm.encode([conv.text_only()])
        pixels = [k for k in inputs if k.startswith("pixel_values")]
        if pixels or vlm.image_token_mask(inputs["input_ids"]).any():
            raise ModelLoadError("a text-only prompt still carries image tokens or pixel values")
        return f"{inputs['input_ids'].shape[1]} tokens, no image tokens, no pixel values"

    doc.run("text-only input", ("chat template",), text_only)

    def image_input() -> str:
        assert vlm is not None
        if vlm.image_token_id is None:
            raise ModelLoadError("the config has no image_token_id: the image tokens cannot be located")
        inputs = vlm.encode([conv])
        if not any(k.startswith("pixel_values") for k in inputs):
            raise ModelLoadError("an image prompt has no pixel values")
        spans = vlm.image_token_spans(inputs["input_ids"])[0]
        if not spans:
            raise ModelLoadError(f"no image token (id {vlm.image_token_id}) in an image prompt's input ids")
        n = sum(b - a for a, b in spans)
        return f"{n} image tokens (id {vlm.image_token_id}) at {', '.join(f'{a}:{b}' for a, b in spans)}"

    doc.run("image input", ("chat template",), image_input)

    def forward() -> str:
        assert vlm is not None
        for c in (conv, conv.text_only()):
            logits = _logits(vlm, [c])
            if not torch.isfinite(logits).all():
                raise ModelLoadError("the forward pass gave non-finite logits")
        return f"an image prompt and a text-only prompt each give logits over {logits.shape[-1]} tokens"

    doc.run("forward pass", ("text-only input", "image input"), forward)

    def coca() -> str:
        assert vlm is not None
        p = conv.with_last_user_text("Be safe and helpful.\n\n" + USER_MARK)
        both = _logits(vlm, [p, conv])
        alone = torch.cat([_logits(vlm, [c]) for c in (p, conv)])
        gap = float((both - alone).abs().max())
        same_tokens = torch.equal(both.argmax(-1), alone.argmax(-1))
        # fp32 must agree to rounding; half precision only on the greedy tokens (batching reorders sums)
        if gap > 1e-3 and (vlm.dtype == torch.float32 or not same_tokens):
            raise ModelLoadError(
                f"a batch of two prompts differs from each alone (max logit gap {gap:.2g}, {vlm.dtype}); "
                "check the padding side and the attention mask"
            )
        return f"two-branch batch equals each branch alone (max logit gap {gap:.1e}, {vlm.dtype})"

    doc.run("CoCA: two-branch batch", ("image input",), coca)

    def cmrm() -> str:
        assert vlm is not None
        from vlmshield.models.hooks import edit_layer_outputs

        layers_ = vlm.decoder_layers()
        calls = [0] * len(layers_)
        before = _logits(vlm, [conv])

        def shift(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def fn(h: torch.Tensor) -> torch.Tensor:
                calls[k] += 1
                return h + 1.0

            return fn

        with ExitStack() as stack:
            for k, layer in enumerate(layers_):
                stack.enter_context(edit_layer_outputs(layer, shift(k)))
            during = _logits(vlm, [conv])
        after = _logits(vlm, [conv])
        if calls != [1] * len(layers_):
            raise ModelLoadError(
                f"the decoder layers ran {calls} times in one forward pass (expected once each)"
            )
        if torch.equal(before, during):
            raise ModelLoadError("adding a vector at every decoder layer did not change the logits")
        if not torch.equal(before, after):
            raise ModelLoadError("the logits differ after the hooks were removed")
        # the calibration batch: a text-only row and a blank-image row, states at every layer
        states = vlm.forward([conv.text_only(), conv.with_replaced_images("blank")]).hidden
        if len(states) != len(layers_):
            raise ModelLoadError("the hidden states of some decoder layers were not captured")
        return f"hooks on {len(layers_)} layers change the logits and come off exactly; states captured"

    doc.run("CMRM: layer hooks", ("decoder layers", "forward pass"), cmrm)

    def ecso() -> str:
        assert vlm is not None
        from vlmshield.generation import GenerationConfig

        final = Conversation.single(f'Hints: "Answer: a picture"\n\n{USER_MARK}', system=SYSTEM_MARK)
        inputs = vlm.encode([final])
        if any(k.startswith("pixel_values") for k in inputs):
            raise ModelLoadError("the text-only step carries pixel values")
        out = vlm.generate_from_inputs(inputs, GenerationConfig(max_new_tokens=2))
        return f"a text-only step generates ({out.num_new_tokens[0]} tokens, no image)"

    doc.run("ECSO: text-only step", ("forward pass",), ecso)
    return report


@torch.inference_mode()
def _logits(vlm: VLM, convs: list[Conversation]) -> torch.Tensor:
    """Next-token logits of a batch straight from the model (no decoder-layer lookup needed)."""
    return vlm.model(**vlm.encode(convs), use_cache=False).logits[:, -1, :].float()


def _resolves(model: nn.Module, path: str) -> bool:
    try:
        return isinstance(operator.attrgetter(path)(model), nn.ModuleList)
    except AttributeError:
        return False
