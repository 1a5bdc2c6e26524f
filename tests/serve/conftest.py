"""Fixtures for the server tests: a real uvicorn server on 127.0.0.1 over a tiny LLaVA, spoken to with
the official ``openai`` client, and small backends whose timing the tests control."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from PIL import Image

from vlmshield.backends.openai_compat import image_to_data_url
from vlmshield.conversation import Conversation
from vlmshield.generation import Cost, GenerationConfig, GenerationOutput
from vlmshield.models import VLM
from vlmshield.serve import ServerThread, create_app

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
#: The defended deployments of the main test server (``tiny:<name>``).
DEFENSES = ["coca", "ecso", "cmrm:vectors={vectors}"]
IDS = ["tiny", "tiny:coca", "tiny:ecso", "tiny:cmrm"]


def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def user_message(text: str, image: Image.Image | None = None) -> dict[str, Any]:
    if image is None:
        return {"role": "user", "content": text}
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": image_to_data_url(image)}},
            {"type": "text", "text": text},
        ],
    }


def client_for(url: str, key: str | None = KEY, timeout: float = 30.0) -> OpenAI:
    # the client refuses to start without a key; a placeholder stands for "no key" and the header
    # is removed per request where a test needs it missing
    return OpenAI(base_url=f"{url}/v1", api_key=key or "unused", max_retries=0, timeout=timeout)


@pytest.fixture(scope="session")
def tiny(load_tiny: Callable[[str], VLM]) -> VLM:
    return load_tiny("llava")


@pytest.fixture(scope="session")
def vectors(tiny: VLM, tmp_path_factory: pytest.TempPathFactory, test_image: Image.Image) -> Path:
    """Dataset-level CMRM vectors of the tiny model (two anchors)."""
    from vlmshield.defenses.cmrm import calibrate_cmrm

    anchors = [
        Conversation.single("What is shown?", images=[test_image]),
        Conversation.single("Describe it.", images=[Image.new("RGB", (24, 24), (200, 30, 30))]),
    ]
    path = tmp_path_factory.mktemp("cmrm") / "v.safetensors"
    calibrate_cmrm(tiny, anchors).save(path)
    return path


@pytest.fixture(scope="module")
def served(tiny: VLM, vectors: Path) -> Iterator[ServerThread]:
    """All three defenses and the undefended id, keys on, details exposed, CoCA's alpha per request."""
    from vlmshield.serve import parse_deployment

    specs = [parse_deployment(d.format(vectors=vectors)) for d in DEFENSES]
    specs[0] = parse_deployment("coca", allow_params=["alpha"])
    app = create_app(
        tiny,
        "tiny",
        defenses=specs,
        allow_undefended=True,
        api_keys=[KEY, OTHER_KEY],
        expose_details=True,
        batch_wait_s=0.02,
    )
    with ServerThread(app) as server:
        yield server


@pytest.fixture()
def client(served: ServerThread) -> OpenAI:
    return client_for(served.url)


class GateBackend:
    """A ChatBackend that blocks inside ``generate`` until ``release()``; answers echo the prompt."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[int] = []
        self.entered = threading.Event()

    @property
    def name(self) -> str:
        return "gate"

    def release(self) -> None:
        self.gate.set()

    def generate(
        self, conversations: Sequence[Conversation], config: GenerationConfig | None = None
    ) -> GenerationOutput:
        self.calls.append(len(conversations))
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("gate never released")
        n = len(conversations)
        return GenerationOutput(
            texts=[f"echo: {c.last_user_text}" for c in conversations],
            token_ids=[[1, 2] for _ in range(n)],
            num_new_tokens=[3] * n,
            num_prompt_tokens=[5] * n,
            finished=[True] * n,
            cost=Cost(calls=1),
        )
