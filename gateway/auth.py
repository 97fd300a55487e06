"""Authentication stage: an ``Authorization`` header becomes a :class:`Principal`.

Keys are compared by their SHA-256 hash, never stored or logged in clear. Malformed
tokens are rejected before any store is touched (reliability item 2).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.errors import AuthenticationError, PermissionDeniedError

#: Accepted token shape: printable, no spaces, bounded length.
TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{8,256}$")
PREFIX_LEN = 10


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    """The short prefix shown to people; never enough to use the key."""
    return key[:PREFIX_LEN]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-key or per-team limits; ``None`` means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget_daily_usd: float | None = None
    budget_monthly_usd: float | None = None
    budget_total_usd: float | None = None

    def stricter(self, other: Limits) -> Limits:
        def pick(a: Any, b: Any) -> Any:
            if a is None:
                return b
            if b is None:
                return a
            return min(a, b)

        return Limits(
            rpm=pick(self.rpm, other.rpm),
            tpm=pick(self.tpm, other.tpm),
            concurrency=pick(self.concurrency, other.concurrency),
            budget_daily_usd=pick(self.budget_daily_usd, other.budget_daily_usd),
            budget_monthly_usd=pick(self.budget_monthly_usd, other.budget_monthly_usd),
            budget_total_usd=pick(self.budget_total_usd, other.budget_total_usd),
        )


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the authenticated key and what it may do."""

    key_id: str
    key_prefix: str
    name: str
    team: str | None = None
    #: Client-facing model names the key may use; ``None`` = all.
    models: frozenset[str] | None = None
    #: Effective limits (stricter of key and team).
    limits: Limits = field(default_factory=Limits)
    #: The team's own limits, enforced on counters shared by every key of the team
    #: (``None``: the team has none, or the key has no team).
    team_limits: Limits | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Default routing hints for this key (e.g. {"prefer_tier": "small"}).
    routing: Mapping[str, Any] = field(default_factory=dict)

    def check_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise PermissionDeniedError(
                f"This API key is not allowed to use the model '{model}'.", param="model"
            )


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal: ...


def bearer_token(header: str | None) -> str:
    """Extract and shape-check a bearer token. Raises 401 without echoing it."""
    if not header:
        raise AuthenticationError(
            "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("The Authorization header must be 'Bearer <key>'.")
    if not TOKEN_RE.match(token):
        raise AuthenticationError("The API key is malformed.")
    return token


class StaticKeyAuthenticator:
    """Keys from configuration, held only as hashes."""

    def __init__(self, principals_by_hash: Mapping[str, Principal]) -> None:
        self._by_hash = dict(principals_by_hash)

    @classmethod
    def from_keys(cls, keys: list[tuple[str, Principal]]) -> StaticKeyAuthenticator:
        return cls({hash_key(k): p for k, p in keys})

    def lookup(self, token: str) -> Principal | None:
        return self._by_hash.get(hash_key(token))

    async def authenticate(self, token: str) -> Principal:
        principal = self.lookup(token)
        if principal is None:
            raise AuthenticationError("Incorrect API key provided.")
        return principal


def check_admin_token(header: str | None, expected: str | None) -> None:
    if expected is None:
        raise PermissionDeniedError(
            "The admin API is disabled: set auth.admin_token.", code="admin_disabled"
        )
    token = bearer_token(header)
    if not hmac.compare_digest(hash_key(token), hash_key(expected)):
        raise AuthenticationError("Incorrect admin token.", code="invalid_admin_token")
