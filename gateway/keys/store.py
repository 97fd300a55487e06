"""The key store: admin operations on keys and teams, and the lookup by hash."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from gateway.auth import Principal, hash_key, key_prefix
from gateway.db import Base, session_factory
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.keys.models import ApiKey, Team
from gateway.keys.schemas import (
    LIMIT_FIELDS,
    CreatedKey,
    KeyCreate,
    KeyInfo,
    KeyUpdate,
    TeamCreate,
    TeamInfo,
    TeamUpdate,
)

log = logging.getLogger(__name__)

#: The longest grace period a rotated secret may get.
MAX_GRACE_S = 30 * 86400

KEY_PREFIX = "tg-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)  # 30 bytes -> 40 characters


class ConflictError(InvalidRequestError):
    """The object exists already, or is still in use."""

    status_code = 409
    default_code = "conflict"


@dataclass(frozen=True, slots=True)
class Found:
    """A key lookup: the principal and until when it is valid (wall clock)."""

    principal: Principal
    expires_at: dt.datetime | None


def principal_of(key: ApiKey, team: Team | None) -> Principal:
    """The effective principal: models intersected, limits the stricter of key and team."""
    key_limits = key.limits()
    team_limits = team.limits() if team is not None else None
    models: set[str] | None = set(key.models) if key.models is not None else None
    if team is not None and team.models is not None:
        models = set(team.models) if models is None else models & set(team.models)
    return Principal(
        key_id=key.id,
        key_prefix=key.prefix,
        name=key.name,
        team=key.team,
        models=frozenset(models) if models is not None else None,
        limits=key_limits.stricter(team_limits) if team_limits else key_limits,
        metadata=dict(key.meta or {}),
        routing=dict(key.routing or {}),
        team_limits=team_limits,
    )


class KeyStore:
    """Admin operations on keys and teams, and the hash lookup (synchronous SQLAlchemy)."""

    def __init__(
        self,
        engine: Engine,
        *,
        known_models: Iterable[str] | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.engine = engine
        self._sessions: sessionmaker[Session] = session_factory(engine)
        self._known = frozenset(known_models) if known_models is not None else None
        self._now = clock

    def create_tables(self) -> None:
        """For tests and throwaway setups; production schemas come from migrations."""
        tables = [Base.metadata.tables[n] for n in ("teams", "api_keys")]
        Base.metadata.create_all(self.engine, tables=tables)

    # ---------------------------------------------------------------- lookup

    def lookup(self, key_hash: str) -> Found | None:
        """The principal of an active key with this hash, or None."""
        now = self._now()
        with self._sessions() as s:
            row = s.execute(
                select(ApiKey, Team)
                .outerjoin(Team, ApiKey.team == Team.name)
                .where(or_(ApiKey.key_hash == key_hash, ApiKey.previous_key_hash == key_hash))
            ).first()
        if row is None or not row[0].active(now):
            return None
        key, team = row
        expires = key.expires_at
        if key.key_hash != key_hash:  # the previous secret, within its grace period
            until = key.previous_valid_until
            if until is None or until <= now:
                return None
            expires = until if expires is None else min(expires, until)
        return Found(principal_of(key, team), expires)

    # ---------------------------------------------------------------- keys

    def create_key(self, spec: KeyCreate) -> CreatedKey:
        now = self._now()
        if spec.expires_at is not None and _aware(spec.expires_at) <= now:
            raise InvalidRequestError("expires_at must be in the future.", param="expires_at")
        secret = new_key()
        key = ApiKey(
            id="key_" + secrets.token_hex(8),
            key_hash=hash_key(secret),
            prefix=key_prefix(secret),
            name=spec.name,
            team=spec.team,
            models=spec.models,
            meta=spec.metadata,
            routing=spec.routing,
            expires_at=spec.expires_at,
            created_at=now,
            updated_at=now,
        )
        key.set_limits(spec.limits.model_dump())
        with self._sessions.begin() as s:
            self._check_scope(s, key)
            s.add(key)
        log.info("api key created", extra={"key_id": key.id, "key": key.prefix})
        return CreatedKey(**KeyInfo.of(key, now).model_dump(), key=secret)

    def list_keys(self, *, team: str | None = None, include_revoked: bool = False) -> list[KeyInfo]:
        now = self._now()
        q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if team is not None:
            q = q.where(ApiKey.team == team)
        if not include_revoked:
            q = q.where(ApiKey.revoked_at.is_(None))
        with self._sessions() as s:
            return [KeyInfo.of(k, now) for k in s.scalars(q)]

    def get_key(self, key_id: str) -> KeyInfo:
        with self._sessions() as s:
            return KeyInfo.of(self._key(s, key_id), self._now())

    def update_key(self, key_id: str, patch: KeyUpdate) -> KeyInfo:
        now = self._now()
        fields = patch.model_fields_set
        with self._sessions.begin() as s:
            key = self._key(s, key_id)
            if key.revoked_at is not None:
                raise ConflictError("A revoked key cannot be changed.", code="key_revoked")
            if "name" in fields:
                if patch.name is None:
                    raise InvalidRequestError("A key needs a name.", param="name")
                key.name = patch.name
            if "team" in fields:
                key.team = patch.team
            if "models" in fields:
                key.models = patch.models
            if "metadata" in fields:
                key.meta = patch.metadata or {}
            if "routing" in fields:
                key.routing = patch.routing or {}
            if "expires_at" in fields:
                if patch.expires_at is not None and _aware(patch.expires_at) <= now:
                    raise InvalidRequestError(
                        "expires_at must be in the future.", param="expires_at"
                    )
                key.expires_at = patch.expires_at
            if patch.limits is not None:
                key.set_limits(patch.limits.model_dump(include=patch.limits.model_fields_set))
            self._check_scope(s, key)
            key.updated_at = now
            info = KeyInfo.of(key, now)
        log.info("api key updated", extra={"key_id": key_id, "fields": sorted(fields)})
        return info

    def revoke_key(self, key_id: str) -> KeyInfo:
        now = self._now()
        with self._sessions.begin() as s:
            key = self._key(s, key_id)
            if key.revoked_at is None:
                key.revoked_at = now
                key.updated_at = now
            info = KeyInfo.of(key, now)
        log.info("api key revoked", extra={"key_id": key_id})
        return info

    def rotate_key(self, key_id: str, *, grace_s: float = 0) -> CreatedKey:
        """A new secret for the same key (same id, limits and counters).

        The old secret stops working at once, or keeps working for ``grace_s`` seconds
        so that clients can be moved over without an outage. Rotating again ends the
        previous grace period (only the latest old secret is kept).
        """
        if not 0 <= grace_s <= MAX_GRACE_S:
            raise InvalidRequestError(
                f"grace_seconds must be between 0 and {MAX_GRACE_S} (30 days).",
                param="grace_seconds",
            )
        now = self._now()
        secret = new_key()
        with self._sessions.begin() as s:
            key = self._key(s, key_id)
            if key.revoked_at is not None:
                raise ConflictError("A revoked key cannot be rotated.", code="key_revoked")
            if grace_s > 0:
                key.previous_key_hash = key.key_hash
                key.previous_valid_until = now + dt.timedelta(seconds=grace_s)
            else:
                key.previous_key_hash = key.previous_valid_until = None
            key.key_hash = hash_key(secret)
            key.prefix = key_prefix(secret)
            key.rotated_at = now
            key.updated_at = now
            info = KeyInfo.of(key, now)
        log.info(
            "api key rotated",
            extra={"key_id": key_id, "key": info.prefix, "grace_s": grace_s},
        )
        return CreatedKey(**info.model_dump(), key=secret)

    # ---------------------------------------------------------------- teams

    def create_team(self, spec: TeamCreate) -> TeamInfo:
        now = self._now()
        self._check_models(spec.models)
        team = Team(name=spec.name, models=spec.models, meta=spec.metadata)
        team.created_at = team.updated_at = now
        team.set_limits(spec.limits.model_dump())
        try:
            with self._sessions.begin() as s:
                if s.get(Team, spec.name) is not None:
                    raise ConflictError(f"Team '{spec.name}' exists already.", code="team_exists")
                s.add(team)
        except IntegrityError:
            raise ConflictError(f"Team '{spec.name}' exists already.", code="team_exists") from None
        return TeamInfo.of(team)

    def list_teams(self) -> list[TeamInfo]:
        with self._sessions() as s:
            return [TeamInfo.of(t) for t in s.scalars(select(Team).order_by(Team.name))]

    def get_team(self, name: str) -> TeamInfo:
        with self._sessions() as s:
            return TeamInfo.of(self._team(s, name))

    def update_team(self, name: str, patch: TeamUpdate) -> TeamInfo:
        fields = patch.model_fields_set
        with self._sessions.begin() as s:
            team = self._team(s, name)
            if "models" in fields:
                self._check_models(patch.models)
                team.models = patch.models
            if "metadata" in fields:
                team.meta = patch.metadata or {}
            if patch.limits is not None:
                team.set_limits(patch.limits.model_dump(include=patch.limits.model_fields_set))
            team.updated_at = self._now()
            return TeamInfo.of(team)

    def delete_team(self, name: str) -> None:
        with self._sessions.begin() as s:
            team = self._team(s, name)
            in_use = s.scalars(
                select(ApiKey.id).where(ApiKey.team == name, ApiKey.revoked_at.is_(None)).limit(1)
            ).first()
            if in_use is not None:
                raise ConflictError(
                    f"Team '{name}' still has active keys; revoke or move them first.",
                    code="team_in_use",
                )
            for key in s.scalars(select(ApiKey).where(ApiKey.team == name)):
                key.team = None  # revoked keys keep their history without the team row
            s.delete(team)

    # ---------------------------------------------------------------- helpers

    def _key(self, s: Session, key_id: str) -> ApiKey:
        key = s.get(ApiKey, key_id)
        if key is None:
            raise NotFoundError(f"No key with id '{key_id}'.", code="key_not_found")
        return key

    def _team(self, s: Session, name: str) -> Team:
        team = s.get(Team, name)
        if team is None:
            raise NotFoundError(f"No team named '{name}'.", code="team_not_found")
        return team

    def _check_models(self, models: list[str] | None) -> None:
        if models is None or self._known is None:
            return
        unknown = sorted(set(models) - self._known)
        if unknown:
            raise InvalidRequestError(
                f"Unknown model(s): {', '.join(unknown)}.", param="models", code="unknown_model"
            )

    def _check_scope(self, s: Session, key: ApiKey) -> None:
        """A key may not be granted more than its team has (reliability item 3)."""
        self._check_models(key.models)
        if key.team is None:
            return
        team = self._team(s, key.team)
        if team.models is not None and key.models is not None:
            extra = sorted(set(key.models) - set(team.models))
            if extra:
                raise InvalidRequestError(
                    f"Model(s) {', '.join(extra)} are not allowed for team '{team.name}'.",
                    param="models",
                    code="scope_exceeds_team",
                )
        key_l, team_l = key.limits(), team.limits()
        for name in LIMIT_FIELDS:
            mine, theirs = getattr(key_l, name), getattr(team_l, name)
            if mine is not None and theirs is not None and mine > theirs:
                raise InvalidRequestError(
                    f"limits.{name}={mine} exceeds team '{team.name}' limit of {theirs}.",
                    param=f"limits.{name}",
                    code="scope_exceeds_team",
                )


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)
