"""Shared helpers of the defense tests: a guard backend under the test's control and sample rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from PIL import Image

from vlmshield.conversation import Conversation
from vlmshield.generation import Cost, GenerationConfig, GenerationOutput


class RecordingBackend:
    """A ChatBackend answering ``script(conversation)``; records every conversation and config."""

    def __init__(self, script: Callable[[Conversation], str], name: str = "recording") -> None:
        self.script = script
        self._name = name
        self.conversations: list[Conversation] = []
        self.configs: list[GenerationConfig] = []
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    def generate(
        self, conversations: Sequence[Conversation], config: GenerationConfig | None = None
    ) -> GenerationOutput:
        self.calls += 1
        self.conversations.extend(conversations)
        self.configs.append(config or GenerationConfig())
        texts = [self.script(c) for c in conversations]
        n = len(texts)
        return GenerationOutput(
            texts, [[] for _ in texts], [2] * n, [5] * n, [True] * n, Cost(1, 5 * n, 2 * n, 0.0, 1)
        )


@pytest.fixture
def recording() -> type[RecordingBackend]:
    return RecordingBackend


@pytest.fixture(scope="session")
def rows(test_image: Image.Image, other_image: Image.Image) -> list[Conversation]:
    """Three rows of different lengths: an image row, a text-only row, another image row."""
    return [
        Conversation.single("What is in this picture, and how do I make it at home?", images=[test_image]),
        Conversation.single("hello"),
        Conversation.single("Describe the colours.", images=[other_image]),
    ]
