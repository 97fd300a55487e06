"""What admins send and see: the admin API's and the CLI's request and response models."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.auth import Limits
from gateway.keys.models import ApiKey, Team

NAME_RE = r"^[A-Za-z0-9_.-]{1,64}$"
LIMIT_FIELDS = (
    "rpm",
    "tpm",
    "concurrency",
    "budget_daily_usd",
    "budget_monthly_usd",
    "budget_total_usd",
)
_METADATA_MAX_BYTES = 4096


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


_INT32_MAX = 2**31 - 1


class LimitsIn(_Schema):
    """Limits as admins write them; ``null`` or absent means unlimited."""

    # At most the database's INTEGER (32 bits in PostgreSQL), so a huge value is a 400.
    rpm: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    tpm: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    concurrency: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    budget_daily_usd: Decimal | None = Field(default=None, ge=0, max_digits=18, decimal_places=9)
    budget_monthly_usd: Decimal | None = Field(default=None, ge=0, max_digits=18, decimal_places=9)
    budget_total_usd: Decimal | None = Field(default=None, ge=0, max_digits=18, decimal_places=9)


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError:  # a TypeError, which pydantic would not report as a 400
        raise ValueError("must be JSON whose integers fit in 64 bits") from None
    if size > _METADATA_MAX_BYTES:
        raise ValueError(f"must be at most {_METADATA_MAX_BYTES} bytes of JSON")
    return value


class TeamCreate(_Schema):
    name: str = Field(pattern=NAME_RE)
    models: list[str] | None = None
    limits: LimitsIn = Field(default_factory=lambda: LimitsIn())
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _size(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_metadata(v)


class TeamUpdate(_Schema):
    """Only the fields present change; ``limits`` is merged field by field."""

    models: list[str] | None = None
    limits: LimitsIn | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _size(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return v if v is None else _check_metadata(v)


class KeyCreate(_Schema):
    name: str = Field(min_length=1, max_length=128)
    team: str | None = Field(default=None, pattern=NAME_RE)
    #: Client-facing model names the key may use; ``None``: all (within its team's).
    models: list[str] | None = None
    limits: LimitsIn = Field(default_factory=lambda: LimitsIn())
    expires_at: dt.datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    routing: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata", "routing")
    @classmethod
    def _size(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_metadata(v)


class KeyUpdate(_Schema):
    """Only the fields present change; ``limits`` is merged field by field."""

    name: str | None = Field(default=None, min_length=1, max_length=128)
    team: str | None = Field(default=None, pattern=NAME_RE)
    models: list[str] | None = None
    limits: LimitsIn | None = None
    expires_at: dt.datetime | None = None
    metadata: dict[str, Any] | None = None
    routing: dict[str, Any] | None = None

    @field_validator("metadata", "routing")
    @classmethod
    def _size(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return v if v is None else _check_metadata(v)


class LimitsOut(_Schema):
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget_daily_usd: float | None = None
    budget_monthly_usd: float | None = None
    budget_total_usd: float | None = None

    @classmethod
    def of(cls, limits: Limits) -> LimitsOut:
        return cls(**{f: getattr(limits, f) for f in LIMIT_FIELDS})


class TeamInfo(_Schema):
    name: str
    models: list[str] | None
    limits: LimitsOut
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, team: Team) -> TeamInfo:
        return cls(
            name=team.name,
            models=team.models,
            limits=LimitsOut.of(team.limits()),
            metadata=team.meta or {},
            created_at=team.created_at,
            updated_at=team.updated_at,
        )


class KeyRotate(_Schema):
    """Options of a rotation: how long the old secret keeps working (0: not at all)."""

    grace_seconds: int = Field(default=0, ge=0, le=30 * 86400)


class KeyInfo(_Schema):
    """What admins see of a key: never the key itself, never its hash."""

    id: str
    prefix: str
    name: str
    team: str | None
    models: list[str] | None
    limits: LimitsOut
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    rotated_at: dt.datetime | None
    #: Until when the secret before the last rotation still works (None: it does not).
    previous_valid_until: dt.datetime | None
    metadata: dict[str, Any]
    routing: dict[str, Any]
    active: bool

    @classmethod
    def of(cls, key: ApiKey, now: dt.datetime) -> KeyInfo:
        return cls(
            id=key.id,
            prefix=key.prefix,
            name=key.name,
            team=key.team,
            models=key.models,
            limits=LimitsOut.of(key.limits()),
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            created_at=key.created_at,
            updated_at=key.updated_at,
            rotated_at=key.rotated_at,
            previous_valid_until=(
                key.previous_valid_until
                if key.previous_valid_until is not None and key.previous_valid_until > now
                else None
            ),
            metadata=key.meta or {},
            routing=key.routing or {},
            active=key.active(now),
        )


class CreatedKey(KeyInfo):
    """A key as returned once, at creation or rotation: the only time it is shown."""

    key: str
