"""Errors the serving code maps to gRPC status codes."""

from __future__ import annotations

from recsys.errors import RecsysError


class RequestError(ValueError):
    """A request argument that cannot be served: INVALID_ARGUMENT, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotReady(RuntimeError):
    """No bundle loaded yet (or the server is shutting down): UNAVAILABLE."""


class ServeConfigError(RecsysError, ValueError):
    """A serve setting that cannot work; the message names the key."""
