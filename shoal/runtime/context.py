"""What the request being served is, for code far from the HTTP layer: the batch queue reads
the request id when rows are queued, so the log line of a failed row names its request.

Set by the server per request (contextvars follow the request's task, never another's)."""

from __future__ import annotations

from contextvars import ContextVar

current_request_id: ContextVar[bytes | None] = ContextVar("shoal_request_id", default=None)
"""As it came in `x-request-id` (or generated); bytes: decoded only when a log line needs it."""
