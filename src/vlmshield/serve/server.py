"""Running the app with uvicorn: :func:`serve` (blocking, signals handled) and :class:`ServerThread`
(a background server on 127.0.0.1 for tests and benchmarks).

Graceful shutdown (SIGTERM, SIGINT, or :meth:`ServerThread.request_shutdown`): the listening socket
closes, new requests on open connections get 503, idle connections close, every accepted request is
answered (the queue drains), then the batch worker stops and the process exits. Shutdown waits at
most :attr:`ServeSettings.graceful_timeout_s` for accepted requests; a second SIGINT forces it.

Example:
    >>> from vlmshield.serve import ServerThread, create_app
    >>> with ServerThread(create_app(vlm, "M", defenses=["coca"])) as server:  # doctest: +SKIP
    ...     print(server.url)  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from vlmshield.backends.base import ChatBackend
from vlmshield.serve.app import create_app
from vlmshield.serve.middleware import ACCESS_LOGGER
from vlmshield.serve.settings import DeploymentSpec, ServeSettings, check_bind, validated

log = logging.getLogger("vlmshield.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn's server; asking it to exit also marks the app as draining (new requests get 503)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._app: Any = config.app

    def _mark_draining(self) -> None:
        state = getattr(getattr(self._app, "state", None), "server", None)
        if state is not None:
            state.draining = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM / SIGINT: drain, then exit 0 (uvicorn itself re-raises the signal once shut down,
        which ends the process "killed by signal" even after a clean drain). A second SIGINT forces."""
        self._mark_draining()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    def request_shutdown(self) -> None:
        """Start a graceful shutdown from any thread."""
        self._mark_draining()
        self.should_exit = True


def uvicorn_config(app: Any, settings: ServeSettings, **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings for the app: our access log instead of uvicorn's, the drain budget."""
    return uvicorn.Config(
        app,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s),
        **kwargs,
    )


def configure_access_log(stream: Any = None) -> None:
    """Send the JSON access-log lines to ``stream`` (stderr by default), one per line."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(getattr(h, "_vlmshield", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._vlmshield = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def serve(
    backend: ChatBackend,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str | None = None,
    settings: ServeSettings | None = None,
    defenses: Sequence[DeploymentSpec | str] = (),
    allow_undefended: bool | None = None,
    insecure: bool = False,
    log_level: str = "info",
    **overrides: Any,
) -> None:
    """Serve ``backend`` with uvicorn until a shutdown signal (model id defaults to ``backend.name``).

    Refuses a non-loopback ``host`` without API keys unless ``insecure``.

    Example:
        >>> serve(vlm, model_name="llava", defenses=["coca"], api_keys=["..."])  # doctest: +SKIP
    """
    if settings is None:
        settings = validated(ServeSettings, "server settings", **overrides)
    elif overrides:
        settings = validated(ServeSettings, "server settings", **{**settings.model_dump(), **overrides})
    check_bind(host, has_keys=bool(settings.api_keys), insecure=insecure)
    app = create_app(
        backend, model_name or backend.name, settings, defenses=defenses, allow_undefended=allow_undefended
    )
    if settings.access_log:
        configure_access_log()
    server = DrainingServer(uvicorn_config(app, settings, host=host, port=port, log_level=log_level))
    server.run()


class ServerThread:
    """Serve ``app`` on 127.0.0.1 at a free port in a background thread (a context manager).

    The socket is bound before the server starts (no port race). :meth:`request_shutdown` starts a
    graceful shutdown; :meth:`stop` also waits for it.
    """

    def __init__(self, app: Any, *, startup_timeout_s: float = 15.0, log_level: str = "warning") -> None:
        self.app = app
        settings = getattr(getattr(app, "state", None), "settings", None) or ServeSettings()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = DrainingServer(uvicorn_config(app, settings, log_level=log_level))
        self.startup_timeout_s = startup_timeout_s
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name=f"vlmshield-serve-{self.port}", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as e:  # surfaced by start()
            self.errors.append(e)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if self.errors or not self.thread.is_alive():
                self.sock.close()
                raise RuntimeError(f"server failed to start: {self.errors[0] if self.errors else 'exited'}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start within {self.startup_timeout_s} s")
            time.sleep(0.01)
        return self

    def request_shutdown(self) -> None:
        self.server.request_shutdown()

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Shut down gracefully; True if the server thread ended within ``timeout_s``."""
        self.request_shutdown()
        self.thread.join(timeout=timeout_s)
        self.sock.close()
        return not self.thread.is_alive()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
