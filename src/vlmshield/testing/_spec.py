"""The data that describes one tiny-checkpoint family, and the sizes every family shares.

A family is a :class:`FamilySpec`: which transformers classes to instantiate (by name) with which
keyword arguments. Values that depend on the trained tokenizer are written as markers and resolved at
build time by :func:`vlmshield.testing._build.make_recipe`:

- ``Tok("<image>")``: that token's id (it must be in the vocabulary);
- ``TokAttr("eos_token_id")``: an attribute of the tokenizer;
- ``VOCAB``: the tokenizer's length; ``TOKENIZER``: the tokenizer object itself;
- ``C("ClassName", {...})``: an instance of a transformers class built from resolved keyword arguments
  (nested: an image processor inside a processor, a text config inside a model config).

Nothing here imports transformers, so the family table is cheap to import.

Example:
    >>> spec = C("LlamaConfig", {"vocab_size": VOCAB, "eos_token_id": TokAttr("eos_token_id")})
    >>> spec.cls
    'LlamaConfig'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# Language model (decoder) sizes shared by every family.
LM_HIDDEN = 64
LM_INTERMEDIATE = 128
LM_LAYERS = 2
LM_HEADS = 4
LM_KV_HEADS = 2
LM_HEAD_DIM = LM_HIDDEN // LM_HEADS
MAX_POSITIONS = 2048
# Vision tower sizes.
VIS_HIDDEN = 32
VIS_INTERMEDIATE = 64
VIS_LAYERS = 2
VIS_HEADS = 2


@dataclass(frozen=True)
class Tok:
    """The id of ``token`` in the family's tokenizer."""

    token: str


@dataclass(frozen=True)
class TokAttr:
    """An attribute of the family's tokenizer, e.g. ``TokAttr("pad_token_id")``."""

    name: str


@dataclass(frozen=True)
class _Marker:
    name: str


#: The tokenizer's length (``len(tokenizer)``), for ``vocab_size``.
VOCAB = _Marker("vocab")
#: The tokenizer object, for a processor's ``tokenizer`` argument.
TOKENIZER = _Marker("tokenizer")
#: Pass as an :func:`lm` override to leave that key out (the config class does not take it).
DROP = _Marker("drop")


@dataclass(frozen=True)
class C:
    """A transformers class (by name) and its keyword arguments, instantiated at build time."""

    cls: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenizerSpec:
    """How to build the family's tokenizer from a BPE trained on the embedded corpus.

    Attributes:
        cls: the family's real tokenizer class (a ``TokenizersBackend`` subclass).
        style: ``"sentencepiece"`` (``▁`` pieces, byte fallback) or ``"bytelevel"`` (GPT-2 bytes).
        leading: special tokens taking the first ids, in order.
        prepend_space: SentencePiece style only: the first word gets a ``▁`` too (Llama yes, Gemma no).
        named: tokens that become tokenizer attributes (``tokenizer.image_token``), as the real
            checkpoints' ``extra_special_tokens``.
        extra: further special tokens, in order.
        kwargs: other constructor arguments (``bos_token``, ``add_bos_token``, ...).
    """

    cls: str
    style: Literal["sentencepiece", "bytelevel"]
    leading: tuple[str, ...] = ()
    prepend_space: bool = True
    named: Mapping[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


#: ``generation_config.json`` token ids of most families: the tokenizer's own.
TOKENIZER_IDS: Mapping[str, Any] = {
    "bos_token_id": TokAttr("bos_token_id"),
    "eos_token_id": TokAttr("eos_token_id"),
    "pad_token_id": TokAttr("pad_token_id"),
}


@dataclass(frozen=True)
class FamilySpec:
    """Everything that differs between two tiny-checkpoint families.

    Attributes:
        model_type: transformers' ``model_type``.
        imitates: the real checkpoint whose format (chat template, special tokens) is copied.
        model_class: the ``*ForConditionalGeneration`` class name.
        tokenizer: how to build the tokenizer.
        processor: the processor class and its arguments (``chat_template`` is added).
        config: the model config class and its arguments.
        chat_template: the Jinja chat template.
        template_source: where the template comes from (a checkpoint name), or a sentence saying it
            was written to the family's documented format.
        image_token: the placeholder repeated once per image feature in ``input_ids``.
        generation: ``generation_config`` token ids (markers allowed).
        family_generation: the other ``generation_config`` values the real checkpoints ship
            (``generation="family"``), with ``generation_source`` naming where they come from.
        layer_lists: text-config attributes that are per-layer lists (extended cyclically when the
            number of layers changes); ``layer_types`` is always handled.
        layer_index_lists: text-config attributes that list layer indices (the pattern repeats
            when the number of layers changes), e.g. Mllama's ``cross_attention_layers``.
        requires: importable modules the processor needs (``torchvision``, ``num2words``).
        init: parameters to set after the random init, by name suffix (Mllama's cross-attention
            gates start at 0, which would make the image invisible to a random model).
        approximations: what the tiny build does differently from the real family (documentation).
    """

    model_type: str
    imitates: str
    model_class: str
    tokenizer: TokenizerSpec
    processor: C
    config: C
    chat_template: str
    template_source: str
    image_token: str
    generation: Mapping[str, Any] = field(default_factory=lambda: dict(TOKENIZER_IDS))
    family_generation: Mapping[str, Any] = field(default_factory=dict)
    generation_source: str = ""
    layer_lists: tuple[str, ...] = ()
    layer_index_lists: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    init: Mapping[str, float] = field(default_factory=dict)
    approximations: str = ""


# ------------------------------------------------------------------------------- shared pieces


def lm(**overrides: Any) -> dict[str, Any]:
    """Decoder sizes and token ids of a Llama-like text config, with ``overrides``."""
    kwargs: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": LM_HIDDEN,
        "intermediate_size": LM_INTERMEDIATE,
        "num_hidden_layers": LM_LAYERS,
        "num_attention_heads": LM_HEADS,
        "num_key_value_heads": LM_KV_HEADS,
        "head_dim": LM_HEAD_DIM,
        "max_position_embeddings": MAX_POSITIONS,
        **TOKENIZER_IDS,
    }
    kwargs.update(overrides)
    return {k: v for k, v in kwargs.items() if v is not DROP}


def vision(**overrides: Any) -> dict[str, Any]:
    """Vision tower sizes of a CLIP / SigLIP-like config, with ``overrides``."""
    return {
        "hidden_size": VIS_HIDDEN,
        "intermediate_size": VIS_INTERMEDIATE,
        "num_hidden_layers": VIS_LAYERS,
        "num_attention_heads": VIS_HEADS,
        **overrides,
    }


def llama_tokenizer(
    *, named: Mapping[str, str] | None = None, extra: tuple[str, ...] = (), cls: str = "LlamaTokenizer"
) -> TokenizerSpec:
    """Llama / Mistral style: ``<unk>``=0, ``<s>``=1, ``</s>``=2, bytes, pieces; BOS added; pad ``<pad>``."""
    return TokenizerSpec(
        cls=cls,
        style="sentencepiece",
        leading=("<unk>", "<s>", "</s>"),
        named=dict(named or {}),
        extra=extra,
        kwargs={
            "add_bos_token": True,
            "add_eos_token": False,
            "unk_token": "<unk>",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
        },
    )


def gemma_tokenizer(*, named: Mapping[str, str], extra: tuple[str, ...]) -> TokenizerSpec:
    """Gemma style: ``<pad>``=0, ``<eos>``=1, ``<bos>``=2, ``<unk>``=3, ``<mask>``=4; BOS added."""
    return TokenizerSpec(
        cls="GemmaTokenizer",
        style="sentencepiece",
        leading=("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"),
        prepend_space=False,
        named=dict(named),
        extra=extra,
        kwargs={"add_bos_token": True, "add_eos_token": False},
    )
