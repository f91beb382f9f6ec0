"""ferry's error kinds, each with the status code a transport maps it to (no web imports here)."""

from __future__ import annotations

import functools
import os
import re


class FerryError(Exception):
    """Base of every error ferry raises on purpose; ``status_code`` follows HTTP semantics."""

    status_code: int = 500

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class InvalidInput(FerryError):
    """The caller sent something malformed: a bad flag value, a bad request body."""

    status_code = 400


class InputMismatch(InvalidInput):
    """The body parsed, but what it gives the model does not fit the input spec (names, rank, shape, dtype)."""

    status_code = 422


class Unauthorized(FerryError):
    """The request carries no bearer token."""

    status_code = 401


class Forbidden(FerryError):
    """The request may not do this: an unknown token, or a write it has no right to."""

    status_code = 403


class NotFound(FerryError):
    """A service, model, endpoint, version or revision that does not exist."""

    status_code = 404


class Conflict(FerryError):
    """The change collides with the current state (for example an ambiguous name)."""

    status_code = 409


class MethodNotAllowed(FerryError):
    """A route asked with a method it does not take."""

    status_code = 405


class PayloadTooLarge(FerryError):
    """A request body over the configured limit."""

    status_code = 413


class UnsupportedMediaType(FerryError):
    """A request body in an encoding (or content type) ferry does not decode."""

    status_code = 415


class UserCodeError(FerryError):
    """The user's Preprocess code raised; the message names the endpoint and the stage."""

    status_code = 422


class Overloaded(FerryError):
    """Too many requests are waiting for this endpoint; the caller should retry after ``retry_after`` seconds."""

    status_code = 503

    def __init__(self, message: str, retry_after: float = 1.0, **details: object) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class EngineError(FerryError):
    """The engine failed to load or to run a model."""

    status_code = 500


class NotReady(FerryError):
    """The endpoint exists but is still loading; retry after ``retry_after`` seconds."""

    status_code = 503

    def __init__(self, message: str, retry_after: float = 1.0, **details: object) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class Timeout(FerryError):
    """A request or an upstream call took longer than allowed."""

    status_code = 504


GRPC_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ALREADY_EXISTS",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""ferry's status code -> the gRPC status code name: the one table both V2 faces map errors with (else INTERNAL)."""


def grpc_code(status_code: int) -> str:
    """The gRPC status code name for ``status_code`` (INTERNAL for a code the table lacks)."""
    return GRPC_CODES.get(status_code, "INTERNAL")


ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])(?:file://)?/([\w.+~@%-]+)(?:/[\w.+~@%-]+)*/([\w.+~@%-]+)")
"""An absolute path with a directory, not inside a URL (group 1: its top directory, group 2: its file name)."""


@functools.cache
def _root_entries() -> frozenset[str]:
    try:
        return frozenset(os.listdir("/"))
    except OSError:
        return frozenset()


def strip_paths(text: str) -> str:
    """``text`` with the directories cut from local paths (those under a top directory of this machine)."""
    return ABSOLUTE_PATH.sub(lambda m: m.group(2) if m.group(1) in _root_entries() else m.group(0), text)
