"""Every error the runtime answers with, and the ONE place that maps errors to HTTP status."""

from __future__ import annotations

import logging

import orjson

logger = logging.getLogger(__name__)


class ShoalError(Exception):
    """An error with an HTTP status. `headers` are added to the response."""

    status = 500

    def __init__(self, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or []


class InvalidInput(ShoalError):
    status = 400


class ModelNotFound(ShoalError):
    status = 404


class MethodNotAllowed(ShoalError):
    status = 405


class PayloadTooLarge(ShoalError):
    status = 413


class ModelError(ShoalError):
    """The model raised or returned something unusable; the replica keeps serving."""

    status = 500


class NotReady(ShoalError):
    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message, [(b"retry-after", b"1")])


class QueueFull(ShoalError):
    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message, [(b"retry-after", b"1")])


class Draining(ShoalError):
    """The replica got SIGTERM: the header tells the gateway to retry on another replica."""

    status = 503

    def __init__(self, message: str = "replica is draining") -> None:
        super().__init__(message, [(b"retry-after", b"1"), (b"x-shoal-draining", b"1")])


class ClientGone(ShoalError):
    """The client disconnected while its request waited; nobody reads this answer."""

    status = 499  # nginx's "client closed request"


class DeadlineExceeded(ShoalError):
    status = 504


ECHO_LIMIT = 100
"""At most this many characters of what a client sent (a path, a model name) come back in an
error message: a 60 KB name must not come back as a 60 KB answer."""


def echo(text: str) -> str:
    """`text` as an error message may quote it: cut at ECHO_LIMIT characters."""
    if len(text) <= ECHO_LIMIT:
        return text
    return text[:ECHO_LIMIT] + f"... ({len(text)} characters)"


def to_response(
    exc: BaseException, request_id: str = ""
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, extra headers, JSON body `{"error": ...}`) for any exception."""
    if isinstance(exc, ShoalError):
        status, headers, message = exc.status, exc.headers, exc.message
    else:
        # A bug or an unexpected model failure: log it with its traceback, answer 500.
        logger.error("unhandled error: %r", exc, exc_info=exc, extra={"request_id": request_id})
        status, headers, message = 500, [], f"internal error: {type(exc).__name__}: {exc}"
    return status, headers, orjson.dumps({"error": message})


def from_model(name: str, exc: BaseException, *, own: bool) -> ShoalError:
    """The error a request gets when the model failed. `own`: the failure is this request's
    alone (a per-item exception in a batch, or an unbatched call), so the model's ValueError or
    TypeError means a bad input (400); a whole batch failing is the server's problem (500)."""
    if isinstance(exc, ShoalError):
        return exc
    if own and isinstance(exc, ValueError | TypeError):
        return InvalidInput(f"{name}: {exc}")
    return ModelError(f"{name} failed: {type(exc).__name__}: {exc}")
