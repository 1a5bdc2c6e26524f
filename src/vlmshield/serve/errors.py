"""HTTP errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, never a traceback.

Example:
    >>> APIError(404, "model 'x' is not served here", "model_not_found").body()["error"]["code"]
    'model_not_found'
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

#: OpenAI's error ``type`` for each status this server returns.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_disconnected",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


class APIError(Exception):
    """An error answered to the client with ``status`` and a one-line ``message``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_response(status: int, message: str, code: str, **kwargs: Any) -> JSONResponse:
    """A JSON error response (see :class:`APIError`)."""
    return APIError(status, message, code, **kwargs).response()
