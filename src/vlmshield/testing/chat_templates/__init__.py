"""Chat templates of the real checkpoints each tiny family imitates.

Each constant is the ``chat_template`` string published with the named checkpoint (a fact about that
checkpoint's prompt format, quoted as data so that tiny checkpoints format prompts exactly like the
real ones), except where a module says a template was written to the family's documented format.
They are Jinja templates rendered by ``processor.apply_chat_template``.

Example:
    >>> from vlmshield.testing import chat_templates
    >>> "ASSISTANT:" in chat_templates.LLAVA_1_5
    True
"""

from __future__ import annotations

from vlmshield.testing.chat_templates.gemma import GEMMA3, GEMMA4, PALIGEMMA
from vlmshield.testing.chat_templates.idefics import IDEFICS2, IDEFICS3, SMOLVLM
from vlmshield.testing.chat_templates.llava import (
    AYA_VISION,
    INTERNVL,
    LLAVA_1_5,
    LLAVA_NEXT_MISTRAL,
    LLAVA_ONEVISION,
)
from vlmshield.testing.chat_templates.meta import LLAMA4, MLLAMA
from vlmshield.testing.chat_templates.mistral import MISTRAL_SMALL_3_1
from vlmshield.testing.chat_templates.others import COMMAND_A_VISION, GLM4V, LFM2_VL
from vlmshield.testing.chat_templates.qwen import QWEN2_5_VL, QWEN2_VL, QWEN3_VL

__all__ = [
    "AYA_VISION",
    "COMMAND_A_VISION",
    "GEMMA3",
    "GEMMA4",
    "GLM4V",
    "IDEFICS2",
    "IDEFICS3",
    "INTERNVL",
    "LFM2_VL",
    "LLAMA4",
    "LLAVA_1_5",
    "LLAVA_NEXT_MISTRAL",
    "LLAVA_ONEVISION",
    "MISTRAL_SMALL_3_1",
    "MLLAMA",
    "PALIGEMMA",
    "QWEN2_5_VL",
    "QWEN2_VL",
    "QWEN3_VL",
    "SMOLVLM",
]
