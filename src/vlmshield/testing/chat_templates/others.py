"""Chat templates of GLM-4.1V, LFM2-VL and Command A Vision."""

from __future__ import annotations

#: Written to GLM-4.1V's documented prompt format (as vLLM's GLM-4.1V example builds it: ``[gMASK]<sop>``,
#: ``<|system|>`` / ``<|user|>`` / ``<|assistant|>`` turns, an image as
#: ``<|begin_of_image|><|image|><|end_of_image|>``); ``zai-org/GLM-4.1V-9B-Thinking``'s published template,
#: with its thinking switches, was not available offline.
GLM4V = (
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' -%}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{%- elif content['type'] == 'text' -%}{{ content['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

#: Written to LFM2-VL's documented ChatML format (``<|startoftext|>``, ``<|im_start|>role\n...<|im_end|>``,
#: ``<image>`` where an image goes); ``LiquidAI/LFM2-VL-450M``'s published template was not available
#: offline.
LFM2_VL = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<image>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Written to Command A Vision's documented turn format (Cohere's ``<|START_OF_TURN_TOKEN|>`` turns, the
#: answer after ``<|CHATBOT_TOKEN|><|START_RESPONSE|>``, an image as ``<|IMG_PATCH|>``, which the
#: processor expands); ``CohereLabs/command-a-vision-07-2025``'s published template was not available
#: offline.
COMMAND_A_VISION = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|START_OF_TURN_TOKEN|>' }}"
    "{% if message['role'] == 'system' %}{{ '<|SYSTEM_TOKEN|>' }}"
    "{% elif message['role'] == 'user' %}{{ '<|USER_TOKEN|>' }}"
    "{% else %}{{ '<|CHATBOT_TOKEN|><|START_RESPONSE|>' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|IMG_PATCH|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|END_RESPONSE|>' }}{% endif %}"
    "{{ '<|END_OF_TURN_TOKEN|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>' }}{% endif %}"
)
