"""Bearer-token auth with per-token model allow-lists.

The token table comes from a file (`--tokens-file`) or a Kubernetes Secret (key `tokens`); both
hold YAML or JSON, either `{token: [model, ...] | "*"}` or the same mapping under a `tokens` key.
Tokens are compared with `hmac.compare_digest` against every configured token (no early exit),
so the time taken does not depend on how much of a guess is right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import yaml

from shoal.gateway.errors import Forbidden, GatewayError, Unauthorized

ALL_MODELS = "*"


class TokenFileError(ValueError):
    """The token table is malformed."""


_MISSING = "missing bearer token: send 'Authorization: Bearer <token>'"
_MALFORMED = "malformed Authorization header: expected 'Bearer <token>'"
_UNKNOWN = "invalid bearer token"


def parse_tokens(text: str) -> dict[str, frozenset[str]]:
    """Parse a token table; raises TokenFileError with a message naming the problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TokenFileError(f"token table is not valid YAML/JSON: {exc}") from exc
    if data is None:
        return {}
    if (
        isinstance(data, Mapping)
        and set(data) == {"tokens"}
        and isinstance(data["tokens"], Mapping)
    ):
        data = data["tokens"]
    if not isinstance(data, Mapping):
        raise TokenFileError("token table must map token -> list of models or '*'")
    table: dict[str, frozenset[str]] = {}
    for token, allowed in data.items():
        if not isinstance(token, str) or len(token) < 8:
            raise TokenFileError("every token must be a string of at least 8 characters")
        if allowed == ALL_MODELS:
            table[token] = frozenset({ALL_MODELS})
        elif isinstance(allowed, list) and all(isinstance(m, str) for m in allowed):
            table[token] = frozenset(allowed)
        else:
            raise TokenFileError(
                f"token {token[:3]}...: allowed models must be a list of names or '*'"
            )
    return table


class Authenticator:
    """Holds the current token table; `replace` swaps it atomically (file or Secret reload)."""

    def __init__(self, tokens: Mapping[str, frozenset[str]], protect_health: bool) -> None:
        self.protect_health = protect_health
        self._entries: list[tuple[bytes, frozenset[str]]] = []
        self.replace(tokens)

    def replace(self, tokens: Mapping[str, frozenset[str]]) -> None:
        self._entries = [(_digest(t.encode()), allowed) for t, allowed in tokens.items()]

    def _lookup(self, token: bytes) -> frozenset[str] | None:
        digest = _digest(token)
        found: frozenset[str] | None = None
        for stored, allowed in self._entries:
            if hmac.compare_digest(stored, digest):
                found = allowed
        return found

    def check(self, authorization: bytes | None, model: str | None) -> GatewayError | None:
        """None when allowed, else the refusal to raise (401 or 403). `model` None means a
        gateway endpoint (health, metrics, listing): any valid token may see those."""
        if authorization is None:
            return Unauthorized(_MISSING)
        scheme, _, token = authorization.strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return Unauthorized(_MALFORMED)
        allowed = self._lookup(token)
        if allowed is None:
            return Unauthorized(_UNKNOWN)
        if model is None or ALL_MODELS in allowed or model in allowed:
            return None
        return Forbidden(f"this token may not call model {model!r}")

    def allows(self, authorization: bytes | None, model: str) -> bool:
        return self.check(authorization, model) is None


def _digest(token: bytes) -> bytes:
    # Fixed-length digests make compare_digest's time independent of the token's length too.
    return hashlib.sha256(token).digest()
