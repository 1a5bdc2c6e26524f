"""The conformance contract's fixtures: every registered family, each loaded once per session."""

from __future__ import annotations

import pytest

from vlmshield import Conversation
from vlmshield.models.families import FAMILIES as ROWS
from vlmshield.testing import FAMILIES
from vlmshield.testing.families import SPECS

#: Families that run here, and those that cannot (their row's ``status`` says why).
SUPPORTED = [f for f in FAMILIES if ROWS[f].status == "supported"]
BLOCKED = [f for f in FAMILIES if ROWS[f].status != "supported"]


def require(family: str) -> None:
    """Skip when a module the family's processor needs is not installed."""
    for module in SPECS[family].requires:
        pytest.importorskip(module, reason=f"{family}'s processor needs {module}")


@pytest.fixture(params=SUPPORTED)
def family(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return str(request.param)


@pytest.fixture(params=BLOCKED or [pytest.param(None, marks=pytest.mark.skip(reason="no blocked family"))])
def blocked_family(request: pytest.FixtureRequest) -> str:
    require(request.param)
    return str(request.param)


@pytest.fixture
def vlm(family, load_tiny):
    return load_tiny(family)


@pytest.fixture
def convs(test_image, other_image) -> list[Conversation]:
    """Prompts of different lengths, with and without an image and a system turn."""
    return [
        Conversation.single("Describe the image in detail, please, with many words.", images=[test_image]),
        Conversation.single("hi"),
        Conversation.single("What colour?", images=[other_image], system="Answer briefly."),
    ]
