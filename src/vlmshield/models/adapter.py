"""One adapter type over ``AutoModelForImageTextToText`` + ``AutoProcessor`` for every VLM family.

The defenses only talk to :class:`VLM`: conversations in, batched generations / logits / hidden states
out, and the language model's decoder layers for hooks.

Example:
    >>> from vlmshield import Conversation, GenerationConfig, load_vlm
    >>> vlm = load_vlm("llava-hf/llava-1.5-7b-hf", device="cuda")  # doctest: +SKIP
    >>> conv = Conversation.single("What is shown?", images=["cat.png"])
    >>> out = vlm.generate([conv, conv.text_only()], GenerationConfig(max_new_tokens=32))  # doctest: +SKIP
    >>> out.texts  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from vlmshield.conversation import Conversation
from vlmshield.errors import ModelLoadError, UserInputError
from vlmshield.generation import Cost, GenerationConfig, GenerationOutput, timed
from vlmshield.images import as_pil
from vlmshield.models.families import FamilyInfo
from vlmshield.models.hooks import capture_layer_outputs


@dataclass
class ForwardOutput:
    """Result of :meth:`VLM.forward` for a batch of B conversations.

    Attributes:
        logits: next-token logits after the last prompt token, ``[B, vocab]``.
        hidden: decoder layer index -> that layer's output at the last prompt token, ``[B, hidden]``.
        cost: one forward pass.
    """

    logits: torch.Tensor
    hidden: dict[int, torch.Tensor]
    cost: Cost


def _as_list(x: int | list[int] | None) -> list[int]:
    if x is None:
        return []
    return [x] if isinstance(x, int) else list(x)


class VLM:
    """A loaded vision-language model with a uniform interface (see :func:`vlmshield.load_vlm`)."""

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        name: str,
        family: FamilyInfo,
        layers_path: str | None = None,
        max_images: int | None = None,
    ) -> None:
        self.model: Any = model
        self.processor = processor
        self.name_or_path = name
        self.info = family
        self.layers_path = layers_path
        self.max_images = max_images if max_images is not None else family.max_images
        tok = self.tokenizer
        tok.padding_side = "left"
        if not getattr(processor, "chat_template", None) and getattr(tok, "chat_template", None):
            processor.chat_template = tok.chat_template  # processors that load it only on the tokenizer
        gen: Any = self.model.generation_config
        self.eos_token_ids: list[int] = _as_list(gen.eos_token_id) or _as_list(tok.eos_token_id)
        pad = gen.pad_token_id if gen.pad_token_id is not None else tok.pad_token_id
        if pad is None:
            pad = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id: int = int(pad[0] if isinstance(pad, list) else pad)
        if tok.pad_token_id is None:
            tok.pad_token_id = self.pad_token_id
        self._layers: list[nn.Module] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        """The model's name or path (ChatBackend protocol)."""
        return self.name_or_path

    @property
    def family(self) -> str:
        """transformers' ``model_type`` of this model, e.g. ``"llava"``."""
        return self.info.model_type

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def text_config(self) -> Any:
        cfg = self.model.config  # type: ignore[attr-defined]
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers())

    @property
    def image_token_id(self) -> int | None:
        tid = getattr(self.model.config, "image_token_id", None)  # type: ignore[attr-defined]
        return int(tid) if tid is not None else None

    # ------------------------------------------------------------------ layers
    def decoder_layers(self) -> list[nn.Module]:
        """The language model's decoder layers, in order (never the vision tower's).

        Found by the family's known attribute paths, or ``layers_path`` given to :func:`load_vlm`.
        """
        if self._layers is None:
            paths = (self.layers_path,) if self.layers_path else self.info.layer_paths
            for path in paths:
                try:
                    found = operator.attrgetter(path)(self.model)
                except AttributeError:
                    continue
                if isinstance(found, nn.ModuleList) and len(found) > 0:
                    skip = set(self.info.skip_layer_types)
                    self._layers = [layer for layer in found if type(layer).__name__ not in skip]
                    break
            else:
                raise ModelLoadError(
                    f"cannot find the language model's decoder layers of {type(self.model).__name__} "
                    f"(tried {', '.join(paths)}); pass layers_path='...' to load_vlm "
                    "(e.g. 'model.language_model.layers')"
                )
        return self._layers

    # ------------------------------------------------------------------ inputs
    def _messages(self, conv: Conversation) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        for m in conv.messages:
            if m.role == "system" and self.info.system_text and not m.images:
                msgs.append({"role": m.role, "content": m.text})
                continue
            parts: list[dict[str, Any]] = [{"type": "image"} for _ in m.images]
            parts.append({"type": "text", "text": m.text})
            msgs.append({"role": m.role, "content": parts})
        return msgs

    def render(self, conv: Conversation, add_generation_prompt: bool = True) -> str:
        """The conversation as prompt text through the family's own chat template."""
        if conv.num_images > self.max_images:
            raise UserInputError(
                f"the prompt has {conv.num_images} images but {self.info.display} takes at most "
                f"{self.max_images} per prompt; pass fewer images"
            )
        return str(
            self.processor.apply_chat_template(
                self._messages(conv), add_generation_prompt=add_generation_prompt, tokenize=False
            )
        )

    def encode(self, conversations: Sequence[Conversation], add_generation_prompt: bool = True) -> Any:
        """Batch the conversations into model inputs (left padded, on the model's device).

        A conversation without images yields rows with no image tokens; a batch without any image has
        no pixel values at all.
        """
        if not conversations:
            raise UserInputError("no conversations to encode")
        texts = [self.render(c, add_generation_prompt) for c in conversations]
        per_row = [[as_pil(im) for im in c.images] for c in conversations]
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if any(per_row):
            if self.info.nested_images:
                kwargs["images"] = per_row
            else:
                kwargs["images"] = [im for row in per_row for im in row]
        if self.info.text_only_via_tokenizer and not all(per_row):
            inputs = self._encode_split(texts, per_row)
        else:
            inputs = self.processor(**kwargs)
        inputs.pop("labels", None)  # training targets some processors add; never wanted here
        for key in ("images", "pixel_values", "image_sizes"):
            if key in inputs and inputs[key] is None:
                del inputs[key]
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def _encode_split(self, texts: list[str], per_row: list[list[Any]]) -> Any:
        """Encode a batch for a processor that refuses prompts without an image (PaliGemma).

        Rows with images go through the processor, rows without through the tokenizer (with the
        all-prefix token type ids the processor would give); the parts are left padded to one length
        and put back in the original row order.
        """
        from transformers import BatchFeature

        text_rows = [i for i, row in enumerate(per_row) if not row]
        image_rows = [i for i, row in enumerate(per_row) if row]
        parts = [
            (
                text_rows,
                self.tokenizer(
                    [texts[i] for i in text_rows],
                    padding=True,
                    return_tensors="pt",
                    return_token_type_ids=True,
                ),
            )
        ]
        if image_rows:
            images = [per_row[i] for i in image_rows]
            parts.append(
                (image_rows, self.processor(text=[texts[i] for i in image_rows], images=images, padding=True))
            )
            parts[-1][1].convert_to_tensors("pt")
        width = max(int(p["input_ids"].shape[1]) for _, p in parts)
        per_token = [k for k in parts[0][1] if k in ("input_ids", "attention_mask", "token_type_ids")]
        out: dict[str, Any] = {}
        for key in per_token:
            fill = self.pad_token_id if key == "input_ids" else 0
            merged = torch.full((len(texts), width), fill, dtype=torch.long)
            for rows, part in parts:
                values = part[key]
                merged[rows, width - values.shape[1] :] = values.long()
            out[key] = merged
        for rows, part in parts:
            for key, value in part.items():
                if key not in per_token and rows is image_rows:
                    out[key] = value
        return BatchFeature(out)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the image tokens in ``input_ids`` (``[B, T]``)."""
        if self.image_token_id is None:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return input_ids == self.image_token_id

    def image_token_spans(self, input_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
        """Per row, the ``[start, end)`` runs of image tokens in ``input_ids``."""
        spans: list[list[tuple[int, int]]] = []
        for row in self.image_token_mask(input_ids).tolist():
            runs: list[tuple[int, int]] = []
            start = None
            for i, flag in enumerate([*row, False]):
                if flag and start is None:
                    start = i
                elif not flag and start is not None:
                    runs.append((start, i))
                    start = None
            spans.append(runs)
        return spans

    # ------------------------------------------------------------------ generation
    def _hf_generation_config(self, config: GenerationConfig, base: Any = None) -> Any:
        """The transformers ``GenerationConfig`` that ``generate`` uses: ``base`` (default: the
        model's own ``generation_config``, with its repetition penalty etc.) with ``config`` applied."""
        gen = copy.deepcopy(base if base is not None else self.model.generation_config)  # type: ignore[attr-defined]
        gen.max_new_tokens = config.max_new_tokens
        gen.min_new_tokens = config.min_new_tokens
        gen.max_length = None
        gen.do_sample = config.do_sample
        gen.num_beams = 1
        gen.pad_token_id = self.pad_token_id
        gen.eos_token_id = self.eos_token_ids or None
        if config.do_sample:
            gen.temperature, gen.top_p, gen.top_k = config.temperature, config.top_p, config.top_k or None
        else:
            gen.temperature, gen.top_p, gen.top_k = None, None, None
        gen.return_dict_in_generate = False
        return gen

    def generate(
        self,
        conversations: Sequence[Conversation],
        config: GenerationConfig | None = None,
        *,
        logits_processors: Sequence[LogitsProcessor] | None = None,
    ) -> GenerationOutput:
        """Answer each conversation (batched, left padded, stops at EOS per row).

        Example:
            >>> vlm.generate([Conversation.single("hi")], GenerationConfig(max_new_tokens=8))  # doctest: +SKIP
        """
        inputs = self.encode(conversations)
        return self.generate_from_inputs(inputs, config, logits_processors=logits_processors)

    @torch.inference_mode()
    def generate_from_inputs(
        self,
        inputs: Any,
        config: GenerationConfig | None = None,
        *,
        logits_processors: Sequence[LogitsProcessor] | None = None,
        base_generation_config: Any = None,
    ) -> GenerationOutput:
        """Generate from already encoded inputs (see :meth:`encode`).

        ``base_generation_config`` replaces the model's own ``generation_config`` as the base that
        ``config`` is applied to (defenses that must control which logit processors run use it).
        """
        config = config or GenerationConfig()
        cost = Cost(calls=1)
        if config.seed is not None:
            torch.manual_seed(config.seed)
        own = self.model.generation_config
        with timed(cost):
            # generate fills every unset (None) field of the config it is given from the model's own
            # generation_config, so a different base must stand in for the model's own meanwhile.
            if base_generation_config is not None:
                self.model.generation_config = base_generation_config
            try:
                sequences = self.model.generate(  # type: ignore[attr-defined]
                    **inputs,
                    generation_config=self._hf_generation_config(config, base_generation_config),
                    logits_processor=LogitsProcessorList(logits_processors or []),
                )
            finally:
                self.model.generation_config = own
        prompt_len = inputs["input_ids"].shape[1]
        new = sequences[:, prompt_len:].tolist()
        num_prompt = inputs["attention_mask"].sum(dim=1).tolist()
        stop = set(self.eos_token_ids)
        ids_out, finished = [], []
        for row in new:
            cut = next((i for i, t in enumerate(row) if t in stop), None)
            finished.append(cut is not None)
            ids_out.append(row[:cut] if cut is not None else row)
        counts = [len(r) + (1 if f else 0) for r, f in zip(ids_out, finished, strict=True)]
        cost.forward_passes = max(1, sequences.shape[1] - prompt_len)
        cost.prompt_tokens = int(sum(num_prompt))
        cost.new_tokens = int(sum(counts))
        texts = self.tokenizer.batch_decode(ids_out, skip_special_tokens=True)
        return GenerationOutput(
            texts=[t.strip() for t in texts],
            token_ids=ids_out,
            num_new_tokens=counts,
            num_prompt_tokens=[int(n) for n in num_prompt],
            finished=finished,
            cost=cost,
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self, conversations: Sequence[Conversation], layers: Sequence[int] | None = None
    ) -> ForwardOutput:
        """One batched forward pass: next-token logits and the chosen decoder layers' outputs at the
        last prompt token (all layers when ``layers`` is None).

        Example:
            >>> out = vlm.forward([conv, conv.text_only()], layers=[0, 1])  # doctest: +SKIP
            >>> out.hidden[1].shape  # doctest: +SKIP
            torch.Size([2, 4096])
        """
        inputs = self.encode(conversations)
        return self.forward_inputs(inputs, layers)

    @torch.inference_mode()
    def forward_inputs(self, inputs: Any, layers: Sequence[int] | None = None) -> ForwardOutput:
        """:meth:`forward` on already encoded inputs."""
        all_layers = self.decoder_layers()
        chosen = list(range(len(all_layers))) if layers is None else list(layers)
        for i in chosen:
            if not -len(all_layers) <= i < len(all_layers):
                raise UserInputError(f"layer {i} out of range: the model has {len(all_layers)} layers")
        chosen = [i % len(all_layers) for i in chosen]
        cost = Cost(forward_passes=1, calls=1, prompt_tokens=int(inputs["attention_mask"].sum()))
        with (
            timed(cost),
            capture_layer_outputs([all_layers[i] for i in chosen], lambda h: h[:, -1, :]) as rec,
        ):
            out = self.model(**inputs, use_cache=False)
        hidden = {i: rec[k][0].float() for k, i in enumerate(chosen)}
        return ForwardOutput(logits=out.logits[:, -1, :].float(), hidden=hidden, cost=cost)
