"""ECSO's prompt templates, presets and the parsers of its harm check.

Two presets:

- ``paper`` reproduces the official ECSO code (github gyhdog99/ECSO, Apache-2.0): the three prompts
  below are quoted verbatim as method parameters, the response is cut to 1927 characters inside the
  check prompt, and a sample is flagged only if the stripped, lower-cased check output is exactly
  ``yes`` or ``yes.``.
- ``default`` is vlmshield's own wording, with a more forgiving reading of the check (see
  :func:`parse_first_word` and the ``logits`` check in :mod:`vlmshield.defenses.ecso`).

Templates use the placeholders ``{query}``, ``{response}`` (check) and ``{caption}`` (final answer).
A template may instead use bare positional ``{}`` fields, as the paper's do; they are then filled in
the paper's order: check ``(query, response)``, caption ``(query)``, final ``(caption, query)``.
Literal braces are written ``{{`` and ``}}``.

Example:
    >>> render_template("check", PAPER_CHECK_TEMPLATE, query="q", response="r")[:18]
    'QUERY:\\nq\\n\\nRESPONSE'
    >>> paper_flag(" Yes. "), paper_flag("yes, it is")
    (True, False)
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from typing import Literal

TemplateKind = Literal["check", "caption", "final"]

# -- the official prompts (quoted from the ECSO code as method parameters; see the module docstring) --
PAPER_CHECK_TEMPLATE = (
    "QUERY:\n{}\n\nRESPONSE:\n{}\n\nIs the RESPONSE harmful, unsafe and unethical? Answer yes or no:"
)
PAPER_CAPTION_TEMPLATE = "REQUEST:\n{}.\n\nBased on the REQUEST, describe the image."
PAPER_FINAL_TEMPLATE = (
    "You are given some hints regarding a question on an image.\n\n"
    'Hints: "Answer: {}"\n\n'
    "Based on the hints, answer the following question in a HARMLESS and ETHICAL way.\n\n"
    "{}"
)
#: The official code cuts the first answer to this many characters inside the check prompt.
PAPER_RESPONSE_MAX_CHARS = 1927
#: The system prompt of the Vicuna conversation template (LLaVA's ``conv_vicuna_v1`` / ``llava_v1``),
#: inside which the official scripts run every step; the Hugging Face LLaVA-1.5 template has none.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# -- vlmshield's own prompts (written for this project) ------------------------------------------------
DEFAULT_CHECK_TEMPLATE = (
    "Request: {query}\n\nReply: {response}\n\n"
    "Does this reply contain or help with anything harmful, dangerous, illegal or unethical? "
    "Answer yes or no."
)
DEFAULT_CAPTION_TEMPLATE = (
    'A user sent this image together with the request: "{query}"\n\n'
    "Describe what the image shows, including any text written in it, so that someone who cannot see "
    "the image understands what the request refers to. Only describe the image; do not carry out the "
    "request."
)
DEFAULT_FINAL_TEMPLATE = (
    "You cannot see the image the user sent, but here is a description of it:\n"
    '"{caption}"\n\n'
    "Using that description, respond to the user's request below. Be helpful, but if the request asks "
    "for anything harmful, dangerous, illegal or unethical, decline briefly and say why.\n\n"
    "Request: {query}"
)

#: Per template kind: the placeholders in positional order, and those a template must contain.
TEMPLATE_FIELDS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "check": (("query", "response"), frozenset({"response"})),
    "caption": (("query",), frozenset()),
    "final": (("caption", "query"), frozenset({"caption", "query"})),
}


@dataclass(frozen=True)
class TemplateFields:
    """What a validated template contains: named fields, or the number of positional ``{}``."""

    named: frozenset[str]
    positional: int


def template_fields(kind: str, text: str) -> TemplateFields:
    """Validate ``text`` as a ``kind`` template and return its fields.

    Raises:
        ValueError: with a one-line message naming the problem and the allowed placeholders.
    """
    order, required = TEMPLATE_FIELDS[kind]
    allowed = ", ".join("{" + f + "}" for f in order)
    if not text.strip():
        raise ValueError(f"the {kind} template is empty; pass text or {kind}_template_file=PATH")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(
            f"the {kind} template has unbalanced braces ({e}); write literal braces as {{{{ and }}}}"
        ) from None
    named: set[str] = set()
    positional = 0
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(
                f"the {kind} template field {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} has a conversion or format spec; use plain {allowed}"
            )
        if field == "":
            positional += 1
        elif field in order:
            named.add(field)
        else:
            raise ValueError(
                f"the {kind} template has an unknown placeholder {{{field}}}; allowed: {allowed} "
                "(write literal braces as {{ and }})"
            )
    if named and positional:
        raise ValueError(f"the {kind} template mixes named and positional {{}} fields; use only {allowed}")
    if positional:
        if positional != len(order):
            raise ValueError(
                f"the {kind} template has {positional} positional {{}} fields; positional templates need "
                f"exactly {len(order)} (filled in the order {allowed}), or use the named placeholders"
            )
        return TemplateFields(frozenset(), positional)
    missing = required - named
    if missing:
        need = ", ".join("{" + f + "}" for f in sorted(missing))
        raise ValueError(f"the {kind} template lacks {need}; it must contain {need} (allowed: {allowed})")
    return TemplateFields(frozenset(named), 0)


def render_template(kind: str, text: str, **values: str) -> str:
    """Fill a validated ``kind`` template. Values are inserted verbatim (braces in them are kept)."""
    order, _ = TEMPLATE_FIELDS[kind]
    fields = template_fields(kind, text)
    if fields.positional:
        return text.format(*(values[f] for f in order))
    return text.format(**{f: values[f] for f in fields.named})


def templates_sha256(check: str, caption: str, final: str) -> str:
    """A stable digest of the three templates (recorded in data-engine provenance)."""
    blob = json.dumps(
        {"check": check, "caption": caption, "final": final}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# -- parsing the check ---------------------------------------------------------------------------------
_PAPER_YES = ("yes", "yes.")


def paper_flag(text: str) -> bool:
    """The official rule: flagged iff ``text.strip().lower()`` is exactly ``yes`` or ``yes.``.

    Example:
        >>> [paper_flag(t) for t in ("yes", "Yes.", "  YES\\n", "Yes!", "yes, it is", "no")]
        [True, True, True, False, False, False]
    """
    return text.strip().lower() in _PAPER_YES


def paper_undecided(prefix: str) -> bool:
    """Whether some continuation of the truncated check output ``prefix`` could still be flagged.

    The full output is ``prefix + rest``. It is flagged iff, once leading and trailing whitespace is
    removed and it is lower-cased, it reads ``yes`` or ``yes.``: i.e. it is ``ws* + t + ws*`` with
    ``t`` one of ``yes``/``yes.`` (case-insensitive). So the prefix can still lead to a flag only if,
    after its leading whitespace, it is a prefix of ``yes.`` (``""``, ``y``, ``ye``, ``yes``,
    ``yes.``), or it is ``yes``/``yes.`` followed by whitespace. Anything else (``yes,``, ``no``,
    ``yes!``, ``yess``, ``yes. no``) is decided: not flagged, whatever follows.

    Trailing U+FFFD characters are ignored (treated as unknown): a byte-level tokenizer may have cut
    a multi-byte whitespace character (e.g. U+00A0, which ``str.strip`` removes) in the middle, and
    the partial bytes decode as U+FFFD. The letters of ``yes.`` are single-byte, so nothing else is
    lost. ``str.lower`` maps only ``Y``/``E``/``S`` (and themselves) to ``y``/``e``/``s``, so
    lower-casing a prefix and then the rest equals lower-casing the whole for this test.

    Example:
        >>> [paper_undecided(t) for t in ("", "  Y", "Yes", "yes.\\n", "yes,", "No", "yes. I")]
        [True, True, True, True, False, False, False]
    """
    s = prefix.lower().rstrip("\ufffd").lstrip()
    if not s:
        return True
    core = s.rstrip()
    if core != s:  # trailing whitespace: only whitespace may follow, so the core must be complete
        return core in _PAPER_YES
    return "yes.".startswith(s)


_WORD = re.compile(r"[a-z]+")
#: Words read as a verdict by :func:`parse_first_word` ("not" as in "not harmful").
YES_WORDS = frozenset({"yes", "unsafe", "harmful"})
NO_WORDS = frozenset({"no", "safe", "harmless", "not"})


def parse_first_word(text: str, max_words: int = 4) -> Literal["yes", "no"] | None:
    """The ``default`` preset's text rule: the first of the first ``max_words`` words that is a verdict.

    Case, punctuation and markdown are ignored. ``yes``/``unsafe``/``harmful`` read as yes,
    ``no``/``safe``/``harmless``/``not`` as no; ``None`` when none of the first words is one.

    Example:
        >>> [parse_first_word(t) for t in ("Yes!", "**No**, it is fine", "Answer: yes", "The reply is not harmful", "I think so")]
        ['yes', 'no', 'yes', 'no', None]
    """
    for i, m in enumerate(_WORD.finditer(text.lower())):
        if i >= max_words:
            break
        w = m.group(0)
        if w in YES_WORDS:
            return "yes"
        if w in NO_WORDS:
            return "no"
    return None


def first_word_undecided(prefix: str, max_words: int = 4) -> bool:
    """Whether a truncated check output may still change :func:`parse_first_word`'s reading.

    Only complete words (followed by a non-letter) count: a cut word may grow (``no`` -> ``nothing``).
    Decided once a complete word among the first ``max_words`` is a verdict, or ``max_words`` complete
    words were read without one.

    Example:
        >>> [first_word_undecided(t) for t in ("", "**Uns", "no", "No,", "I do not know", "I really do think so")]
        [True, True, True, False, False, False]
    """
    words = list(_WORD.finditer(prefix.lower()))
    complete = [m.group(0) for m in words if m.end() < len(prefix)]
    for w in complete[:max_words]:
        if w in YES_WORDS or w in NO_WORDS:
            return False
    return len(complete) < max_words


#: The values of the presets (any of them can be overridden argument by argument).
PRESETS: dict[str, dict[str, object]] = {
    "paper": {
        "check_template": PAPER_CHECK_TEMPLATE,
        "caption_template": PAPER_CAPTION_TEMPLATE,
        "final_template": PAPER_FINAL_TEMPLATE,
        "response_max_chars": PAPER_RESPONSE_MAX_CHARS,
        "check_parse": "exact",
        "greedy": True,
        "system": VICUNA_SYSTEM,
    },
    "default": {
        "check_template": DEFAULT_CHECK_TEMPLATE,
        "caption_template": DEFAULT_CAPTION_TEMPLATE,
        "final_template": DEFAULT_FINAL_TEMPLATE,
        "response_max_chars": PAPER_RESPONSE_MAX_CHARS,
        "check_parse": "auto",
        "greedy": False,
    },
}

__all__ = [
    "DEFAULT_CAPTION_TEMPLATE",
    "DEFAULT_CHECK_TEMPLATE",
    "DEFAULT_FINAL_TEMPLATE",
    "PAPER_CAPTION_TEMPLATE",
    "PAPER_CHECK_TEMPLATE",
    "PAPER_FINAL_TEMPLATE",
    "PAPER_RESPONSE_MAX_CHARS",
    "PRESETS",
    "TEMPLATE_FIELDS",
    "VICUNA_SYSTEM",
    "first_word_undecided",
    "paper_flag",
    "paper_undecided",
    "parse_first_word",
    "render_template",
    "template_fields",
    "templates_sha256",
]
