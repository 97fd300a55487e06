"""Managed API keys and teams: the key store, its admin operations, and the authenticator.

A key is ``tg-`` + 40 URL-safe random characters. It is shown once, when created or
rotated; the database keeps only its SHA-256 hash (looked up with a bound parameter) and
a short prefix for people. Each key has a name, an optional team, allowed models,
limits, an optional expiry and free metadata. A team may carry models and limits too.

A key's scope never exceeds its team's: explicit key models must be a subset of the
team's and explicit key limits at most the team's (checked on create and update), and
the effective scope is always the intersection / stricter of both, so narrowing a team
later narrows its keys at once.

:class:`KeyAuthenticator` serves the hot path: malformed tokens are refused before any
lookup, and a bounded TTL cache (hash → principal) keeps the database off the request
path. ``auth.key_cache_ttl_s`` bounds how long a revoked key keeps working on *another*
replica; the replica that served the admin call forgets it at once.
"""

from gateway.keys.auth import (
    KEY_RE,
    ChainAuthenticator,
    KeyAuthenticator,
    KeyServices,
    open_key_services,
)
from gateway.keys.models import ApiKey, Team
from gateway.keys.schemas import (
    LIMIT_FIELDS,
    CreatedKey,
    KeyCreate,
    KeyInfo,
    KeyRotate,
    KeyUpdate,
    LimitsIn,
    LimitsOut,
    TeamCreate,
    TeamInfo,
    TeamUpdate,
)
from gateway.keys.store import ConflictError, Found, KeyStore, new_key, principal_of

__all__ = [
    "KEY_RE",
    "LIMIT_FIELDS",
    "ApiKey",
    "ChainAuthenticator",
    "ConflictError",
    "CreatedKey",
    "Found",
    "KeyAuthenticator",
    "KeyCreate",
    "KeyInfo",
    "KeyRotate",
    "KeyServices",
    "KeyStore",
    "KeyUpdate",
    "LimitsIn",
    "LimitsOut",
    "Team",
    "TeamCreate",
    "TeamInfo",
    "TeamUpdate",
    "new_key",
    "open_key_services",
    "principal_of",
]
