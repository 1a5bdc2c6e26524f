"""Turn a :class:`~vlmshield.testing._spec.FamilySpec` into a tokenizer, a processor and a config.

One generic code path for every family: train the BPE, instantiate the family's tokenizer class, then
resolve the spec's markers (token ids, nested transformers classes) into the processor and the config.

Example:
    >>> from vlmshield.testing.families import SPECS
    >>> recipe = make_recipe(SPECS["llava"])  # doctest: +SKIP
    >>> recipe.model_class.__name__  # doctest: +SKIP
    'LlavaForConditionalGeneration'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlmshield.testing._spec import (
    TOKENIZER,
    VOCAB,
    C,
    FamilySpec,
    Tok,
    TokAttr,
    TokenizerSpec,
)
from vlmshield.testing._tokenizers import byte_fallback_tokens, train_bpe


@dataclass
class Recipe:
    """What :func:`vlmshield.testing.build_tiny_checkpoint` needs from a family.

    Attributes:
        processor: the family's processor (tokenizer, image processor, chat template).
        model_class: the ``*ForConditionalGeneration`` class.
        config: the model config (token ids already set).
        generation: keyword arguments of the model's ``GenerationConfig`` (token ids).
        image_token: the placeholder token repeated once per image feature in ``input_ids``.
        image_token_id: its id.
    """

    processor: Any
    model_class: type
    config: Any
    generation: dict[str, Any]
    image_token: str
    image_token_id: int


def _class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def build_tokenizer(spec: TokenizerSpec) -> Any:
    """Instantiate the family's tokenizer class from a trained vocabulary and add special tokens.

    ``named`` tokens become attributes of the tokenizer (``tokenizer.image_token``) as in the real
    checkpoints' ``extra_special_tokens``; ``extra`` tokens are further special tokens, in order.
    """
    vocab, merges = train_bpe(spec.style, spec.leading, prepend_space=spec.prepend_space)
    tok = _class(spec.cls)(
        vocab=vocab, merges=merges, extra_special_tokens=dict(spec.named) or None, **spec.kwargs
    )
    missing = [t for t in spec.extra if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return tok


def resolve(value: Any, tok: Any) -> Any:
    """``value`` with every marker replaced (see :mod:`vlmshield.testing._spec`)."""
    if isinstance(value, Tok):
        vocab = tok.get_vocab()
        if value.token not in vocab:
            raise KeyError(f"token {value.token!r} is not in the tiny vocabulary")
        return vocab[value.token]
    if isinstance(value, TokAttr):
        return getattr(tok, value.name)
    if value is VOCAB:
        return len(tok)
    if value is TOKENIZER:
        return tok
    if isinstance(value, C):
        return _class(value.cls)(**resolve(dict(value.kwargs), tok))
    if isinstance(value, Mapping):
        return {k: resolve(v, tok) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(resolve(v, tok) for v in value)
    return value


def make_recipe(spec: FamilySpec) -> Recipe:
    """Build the tokenizer, processor and config that ``spec`` describes."""
    tok = build_tokenizer(spec.tokenizer)
    processor_kwargs = {**spec.processor.kwargs, "chat_template": spec.chat_template}
    processor = resolve(C(spec.processor.cls, processor_kwargs), tok)
    if getattr(processor, "chat_template", None) != spec.chat_template:
        processor.chat_template = spec.chat_template  # a processor that drops the argument (BLIP-2)
    return Recipe(
        processor=processor,
        model_class=_class(spec.model_class),
        config=resolve(spec.config, tok),
        generation=resolve(dict(spec.generation), tok),
        image_token=spec.image_token,
        image_token_id=resolve(Tok(spec.image_token), tok),
    )


def quiet_token_ids(tok: Any) -> list[int]:
    """Ids that greedy decoding of a random model should avoid.

    These are the special and added tokens (BOS/EOS/PAD, image placeholders, turn markers), the
    byte-fallback pieces, and pieces that decode to broken UTF-8 or control characters. The builder
    scales their output-embedding rows down, so greedy decoding of a random model emits word pieces
    (the text looks like words), never stops early on EOS and never emits an image placeholder.
    """
    quiet = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    vocab = tok.get_vocab()
    quiet |= {vocab[b] for b in byte_fallback_tokens() if b in vocab}
    for token_id in range(len(tok)):
        text = tok.decode([token_id])
        if token_id not in quiet and any(c == "\ufffd" or not (c.isprintable() or c in " \n") for c in text):
            quiet.add(token_id)
    return sorted(quiet)
