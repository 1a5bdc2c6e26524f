"""A defended, OpenAI-compatible endpoint: one model id per defense, streaming, keys, batching, metrics.

``vlmshield serve --model M --defense coca --defense ecso`` (or :func:`serve` / :func:`create_app`)
answers ``/v1/chat/completions`` for ``M:coca`` and ``M:ecso`` (and ``M`` itself only when the
undefended model is allowed), so any OpenAI client picks a defense with ``model=``. See
``docs/serve.md`` for the routes, limits, keys, streaming and measured numbers.

Modules: :mod:`~vlmshield.serve.app` (the app), :mod:`~vlmshield.serve.routes`,
:mod:`~vlmshield.serve.state` (what the routes share), :mod:`~vlmshield.serve.schemas` (OpenAI shapes),
:mod:`~vlmshield.serve.batching` (queue and batches), :mod:`~vlmshield.serve.streaming` (tokens out
of a defense, SSE), :mod:`~vlmshield.serve.deployments` (model ids and defenses),
:mod:`~vlmshield.serve.auth`, :mod:`~vlmshield.serve.metrics`, :mod:`~vlmshield.serve.middleware`,
:mod:`~vlmshield.serve.settings`, :mod:`~vlmshield.serve.server` (uvicorn, graceful shutdown).

Example:
    >>> import vlmshield
    >>> from vlmshield.serve import serve
    >>> vlm = vlmshield.load_vlm("path/to/llava")  # doctest: +SKIP
    >>> serve(vlm, model_name="llava", defenses=["coca:alpha=1", "ecso"], port=8000)  # doctest: +SKIP
    # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-").chat.completions.create(
    #           model="llava:coca", messages=[{"role": "user", "content": "hi"}])
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "vlmshield.serve needs FastAPI, uvicorn and prometheus-client: pip install 'vlmshield[serve]'"
    ) from _e

from vlmshield.serve.app import create_app
from vlmshield.serve.schemas import (
    ChatCompletionRequest,
    decode_data_url,
    decode_image_bytes,
    request_to_config,
    request_to_conversation,
)
from vlmshield.serve.server import ServerThread, serve
from vlmshield.serve.settings import DeploymentSpec, ServeSettings, parse_deployment

__all__ = [
    "ChatCompletionRequest",
    "DeploymentSpec",
    "ServeSettings",
    "ServerThread",
    "create_app",
    "decode_data_url",
    "decode_image_bytes",
    "parse_deployment",
    "request_to_config",
    "request_to_conversation",
    "serve",
]
