"""Chat templates of the Idefics / SmolVLM checkpoints (quoted from the named checkpoints)."""

from __future__ import annotations

_IDEFICS_BODY = (
    "{% for message in messages %}"
    "{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}"
    "{% endif %}"
    "{% endfor %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

#: chat_template of ``HuggingFaceM4/Idefics3-8B-Llama3``.
IDEFICS3 = "<|begin_of_text|>" + _IDEFICS_BODY

#: chat_template of ``HuggingFaceTB/SmolVLM-256M-Instruct``.
SMOLVLM = "<|im_start|>" + _IDEFICS_BODY.replace(
    "{{message['role'].capitalize()}}", "{{message['role'] | capitalize}}"
)

#: chat_template of ``HuggingFaceM4/idefics2-8b`` (Idefics3's without the leading ``<|begin_of_text|>``;
#: the tokenizer adds ``<s>``).
IDEFICS2 = _IDEFICS_BODY
