"""The key store, its scope rules, and the authenticator in front of it."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.auth import Principal, StaticKeyAuthenticator
from gateway.db import make_engine
from gateway.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from gateway.keys import (
    KEY_RE,
    ChainAuthenticator,
    ConflictError,
    Found,
    KeyAuthenticator,
    KeyCreate,
    KeyStore,
    KeyUpdate,
    LimitsIn,
    TeamCreate,
    TeamUpdate,
)


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


class CountingStore(KeyStore):
    """Counts hash lookups, and can be told to fail like a dead database."""

    lookups = 0
    broken = False

    def lookup(self, key_hash: str) -> Found | None:
        self.lookups += 1
        if self.broken:
            from sqlalchemy.exc import OperationalError

            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return super().lookup(key_hash)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> CountingStore:
    s = CountingStore(
        make_engine(f"sqlite:///{tmp_path}/keys.db"),
        known_models={"small", "large", "auto"},
        clock=clock,
    )
    s.create_tables()
    return s


def limits(**kw: object) -> LimitsIn:
    return LimitsIn.model_validate(kw)


def test_a_key_is_shown_once_and_stored_as_a_hash(store: CountingStore) -> None:
    created = store.create_key(KeyCreate(name="svc", limits=limits(rpm=10)))
    assert KEY_RE.match(created.key)
    assert created.prefix == created.key[:10] and created.id.startswith("key_")
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM api_keys")).mappings().one()
    assert row["key_hash"] == hashlib.sha256(created.key.encode()).hexdigest()
    assert all(created.key not in str(v) for v in row.values())
    listed = store.list_keys()
    assert [k.id for k in listed] == [created.id]
    assert "key" not in listed[0].model_dump()
    assert "key_hash" not in listed[0].model_dump()


def test_lookup_gives_the_effective_principal(store: CountingStore) -> None:
    store.create_team(
        TeamCreate(
            name="eng", models=["small", "large"], limits=limits(rpm=100, budget_daily_usd="5")
        )
    )
    created = store.create_key(
        KeyCreate(
            name="svc",
            team="eng",
            models=["small"],
            limits=limits(rpm=10, tpm=5000),
            metadata={"owner": "alice"},
        )
    )
    found = store.lookup(hashlib.sha256(created.key.encode()).hexdigest())
    assert found is not None
    p = found.principal
    assert p.key_id == created.id and p.team == "eng" and p.models == frozenset({"small"})
    assert p.limits.rpm == 10 and p.limits.tpm == 5000 and p.limits.budget_daily_usd == 5.0
    assert p.team_limits is not None and p.team_limits.rpm == 100
    assert dict(p.metadata) == {"owner": "alice"}
    # Narrowing the team narrows its keys at once.
    store.update_team("eng", TeamUpdate(models=["large"], limits=limits(rpm=5)))
    again = store.lookup(hashlib.sha256(created.key.encode()).hexdigest())
    assert again is not None
    assert again.principal.models == frozenset() and again.principal.limits.rpm == 5


def test_a_key_cannot_exceed_its_team(store: CountingStore) -> None:
    store.create_team(TeamCreate(name="eng", models=["small"], limits=limits(rpm=100)))
    with pytest.raises(InvalidRequestError) as info:
        store.create_key(KeyCreate(name="a", team="eng", models=["large"]))
    assert info.value.code == "scope_exceeds_team" and "large" in info.value.message
    with pytest.raises(InvalidRequestError) as info:
        store.create_key(KeyCreate(name="a", team="eng", limits=limits(rpm=101)))
    assert info.value.param == "limits.rpm"
    ok = store.create_key(KeyCreate(name="a", team="eng", limits=limits(rpm=100)))
    with pytest.raises(InvalidRequestError):
        store.update_key(ok.id, KeyUpdate(limits=limits(rpm=1000)))
    with pytest.raises(NotFoundError):
        store.create_key(KeyCreate(name="b", team="nope"))
    with pytest.raises(InvalidRequestError) as info:
        store.create_key(KeyCreate(name="c", models=["gpt-5"]))
    assert info.value.code == "unknown_model"
    # Moving a key into a stricter team is checked too.
    free = store.create_key(KeyCreate(name="d", limits=limits(rpm=500)))
    with pytest.raises(InvalidRequestError):
        store.update_key(free.id, KeyUpdate(team="eng"))
    assert store.get_key(free.id).team is None


def test_update_merges_limits_and_clears_with_null(store: CountingStore) -> None:
    k = store.create_key(KeyCreate(name="a", limits=limits(rpm=10, tpm=100)))
    patch = KeyUpdate.model_validate({"limits": {"rpm": None, "budget_total_usd": "12.5"}})
    info = store.update_key(k.id, patch)
    assert info.limits.rpm is None and info.limits.tpm == 100
    assert info.limits.budget_total_usd == 12.5
    info = store.update_key(k.id, KeyUpdate(name="renamed"))
    assert info.name == "renamed" and info.limits.tpm == 100
    with pytest.raises(InvalidRequestError):
        store.update_key(k.id, KeyUpdate.model_validate({"name": None}))


def test_budgets_are_stored_as_exact_nano_usd(store: CountingStore) -> None:
    k = store.create_key(KeyCreate(name="a", limits=limits(budget_monthly_usd="0.000000001")))
    with store.engine.connect() as conn:
        nusd = conn.execute(text("SELECT budget_monthly_nusd FROM api_keys")).scalar_one()
    assert nusd == 1
    assert store.get_key(k.id).limits.budget_monthly_usd == 1e-9


def test_revoke_and_rotate(store: CountingStore) -> None:
    k = store.create_key(KeyCreate(name="a"))
    old_hash = hashlib.sha256(k.key.encode()).hexdigest()
    rotated = store.rotate_key(k.id)
    assert rotated.id == k.id and rotated.key != k.key and rotated.rotated_at is not None
    assert store.lookup(old_hash) is None
    new_hash = hashlib.sha256(rotated.key.encode()).hexdigest()
    assert store.lookup(new_hash) is not None
    revoked = store.revoke_key(k.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert store.lookup(new_hash) is None
    assert store.list_keys() == []
    assert [x.id for x in store.list_keys(include_revoked=True)] == [k.id]
    with pytest.raises(ConflictError):
        store.rotate_key(k.id)
    with pytest.raises(ConflictError):
        store.update_key(k.id, KeyUpdate(name="b"))
    with pytest.raises(NotFoundError):
        store.revoke_key("key_missing")


def test_rotation_with_a_grace_period_keeps_the_old_secret_until_then(
    store: CountingStore, clock: Clock
) -> None:
    k = store.create_key(KeyCreate(name="a", expires_at=clock.now + dt.timedelta(days=2)))
    old = hashlib.sha256(k.key.encode()).hexdigest()
    rotated = store.rotate_key(k.id, grace_s=3600)
    new = hashlib.sha256(rotated.key.encode()).hexdigest()
    assert rotated.previous_valid_until == clock.now + dt.timedelta(hours=1)
    found_old, found_new = store.lookup(old), store.lookup(new)
    assert found_old is not None and found_new is not None
    assert found_old.principal.key_id == found_new.principal.key_id == k.id  # same counters
    # The cache may keep the old secret only until its grace ends, the new one to expiry.
    assert found_old.expires_at == clock.now + dt.timedelta(hours=1)
    assert found_new.expires_at == clock.now + dt.timedelta(days=2)
    clock.now += dt.timedelta(minutes=61)
    assert store.lookup(old) is None and store.lookup(new) is not None
    assert store.get_key(k.id).previous_valid_until is None


def test_rotating_again_or_revoking_ends_the_grace_period(store: CountingStore) -> None:
    k = store.create_key(KeyCreate(name="a"))
    first = hashlib.sha256(k.key.encode()).hexdigest()
    second = store.rotate_key(k.id, grace_s=3600)
    third = store.rotate_key(k.id, grace_s=3600)
    assert store.lookup(first) is None  # only the latest old secret is kept
    assert store.lookup(hashlib.sha256(second.key.encode()).hexdigest()) is not None
    store.rotate_key(k.id)  # no grace: the old secret dies at once
    assert store.lookup(hashlib.sha256(third.key.encode()).hexdigest()) is None
    fourth = store.rotate_key(k.id, grace_s=60)
    store.revoke_key(k.id)
    assert store.lookup(hashlib.sha256(fourth.key.encode()).hexdigest()) is None
    with pytest.raises(InvalidRequestError, match="grace_seconds"):
        store.rotate_key(store.create_key(KeyCreate(name="b")).id, grace_s=-1)


def test_expiry(store: CountingStore, clock: Clock) -> None:
    with pytest.raises(InvalidRequestError):
        store.create_key(KeyCreate(name="a", expires_at=clock.now - dt.timedelta(seconds=1)))
    k = store.create_key(KeyCreate(name="a", expires_at=clock.now + dt.timedelta(hours=1)))
    digest = hashlib.sha256(k.key.encode()).hexdigest()
    assert store.lookup(digest) is not None
    clock.now += dt.timedelta(hours=2)
    assert store.lookup(digest) is None
    assert not store.get_key(k.id).active


def test_teams_crud(store: CountingStore) -> None:
    store.create_team(TeamCreate(name="eng", limits=limits(concurrency=4)))
    with pytest.raises(ConflictError):
        store.create_team(TeamCreate(name="eng"))
    assert [t.name for t in store.list_teams()] == ["eng"]
    assert store.get_team("eng").limits.concurrency == 4
    k = store.create_key(KeyCreate(name="a", team="eng"))
    with pytest.raises(ConflictError) as info:
        store.delete_team("eng")
    assert info.value.status_code == 409
    store.revoke_key(k.id)
    store.delete_team("eng")
    assert store.list_teams() == []
    assert store.get_key(k.id).team is None
    with pytest.raises(NotFoundError):
        store.get_team("eng")


async def test_malformed_tokens_never_reach_the_store(store: CountingStore) -> None:
    auth = KeyAuthenticator(store)
    for token in (
        "tg-' OR '1'='1' --",
        "tg-short",
        "sk-" + "a" * 40,
        "tg-" + "a" * 39 + "!",
        "tg-" + "a" * 41,
    ):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(token)
    assert store.lookups == 0
    with pytest.raises(AuthenticationError):
        await auth.authenticate("tg-" + "a" * 40)  # well-formed, unknown: one lookup
    assert store.lookups == 1


async def test_cache_is_bounded_and_expires(store: CountingStore) -> None:
    now = [0.0]
    auth = KeyAuthenticator(store, ttl_s=10, max_entries=2, clock=lambda: now[0])
    keys = [store.create_key(KeyCreate(name=f"k{i}")).key for i in range(3)]
    for key in keys:
        assert (await auth.authenticate(key)).name.startswith("k")
    assert store.lookups == 3
    await auth.authenticate(keys[2])
    await auth.authenticate(keys[1])
    assert store.lookups == 3  # both still cached
    await auth.authenticate(keys[0])  # evicted (least recently used): looked up again
    assert store.lookups == 4
    now[0] = 11
    await auth.authenticate(keys[0])
    assert store.lookups == 5


async def test_revocation_reaches_the_cache_through_invalidate_or_ttl(
    store: CountingStore,
) -> None:
    now = [0.0]
    auth = KeyAuthenticator(store, ttl_s=10, clock=lambda: now[0])
    k = store.create_key(KeyCreate(name="a"))
    await auth.authenticate(k.key)
    store.revoke_key(k.id)
    await auth.authenticate(k.key)  # another replica: still cached, for at most the TTL
    now[0] = 10.5
    with pytest.raises(AuthenticationError):
        await auth.authenticate(k.key)
    k2 = store.create_key(KeyCreate(name="b"))
    await auth.authenticate(k2.key)
    store.revoke_key(k2.id)
    auth.invalidate()  # the replica that served the admin call
    with pytest.raises(AuthenticationError):
        await auth.authenticate(k2.key)


async def test_a_burst_on_a_cold_key_makes_one_lookup(store: CountingStore) -> None:
    auth = KeyAuthenticator(store)
    k = store.create_key(KeyCreate(name="a"))
    principals = await asyncio.gather(*(auth.authenticate(k.key) for _ in range(20)))
    assert {p.key_id for p in principals} == {k.id}
    assert store.lookups == 1


async def test_a_dead_database_is_a_503_not_a_500(store: CountingStore) -> None:
    auth = KeyAuthenticator(store)
    store.broken = True
    with pytest.raises(ServiceUnavailableError) as info:
        await auth.authenticate("tg-" + "b" * 40)
    assert info.value.status_code == 503 and info.value.code == "key_store_unavailable"


async def test_chain_tries_static_then_managed_keys(store: CountingStore) -> None:
    static = StaticKeyAuthenticator.from_keys(
        [("tg-static-key-0001", Principal(key_id="static-0", key_prefix="tg-static", name="s"))]
    )
    chain = ChainAuthenticator(static, KeyAuthenticator(store))
    managed = store.create_key(KeyCreate(name="m"))
    assert (await chain.authenticate("tg-static-key-0001")).key_id == "static-0"
    assert (await chain.authenticate(managed.key)).key_id == managed.id
    with pytest.raises(AuthenticationError) as info:
        await chain.authenticate("tg-" + "z" * 40)
    assert info.value.message == "Incorrect API key provided."


async def test_no_key_ever_reaches_the_logs(
    store: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = KeyAuthenticator(store)
    created = store.create_key(KeyCreate(name="a"))
    rotated = store.rotate_key(created.id)
    await auth.authenticate(rotated.key)
    with pytest.raises(AuthenticationError) as info:
        await auth.authenticate(created.key)
    store.revoke_key(created.id)
    assert caplog.records  # the operations are logged, with their structured fields...
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for secret in (created.key, rotated.key):
        assert secret not in logged  # ...but never with a key
        assert secret not in info.value.message
    assert rotated.prefix in logged


def test_cli_manages_keys_and_teams(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli_keys import app

    db = f"sqlite:///{tmp_path}/cli.db"
    KeyStore(make_engine(db)).create_tables()
    config = tmp_path / "tollgate.yaml"
    config.write_text(
        f"ledger: {{url: '{db}'}}\n"
        "engines: [{name: s0, url: 'http://127.0.0.1:9', tier: small, model: m}]\n"
        "models: [{name: small, tier: small}]\n"
    )
    run = CliRunner().invoke

    def ok(*args: str) -> str:
        result = run(app, [*args, "-c", str(config)])
        assert result.exit_code == 0, result.output
        return result.stdout

    ok("teams", "create", "eng", "--rpm", "100", "--budget-daily", "5", "-m", "small")
    out = ok("create", "svc", "--team", "eng", "--rpm", "10", "--expires", "30d", "--json")
    created = json.loads(out)
    assert KEY_RE.match(created["key"]) and created["limits"]["rpm"] == 10
    refused = run(app, ["create", "x", "--team", "eng", "--rpm", "1000", "-c", str(config)])
    assert refused.exit_code == 1 and "exceeds team 'eng'" in refused.output
    listed = ok("list")
    assert created["id"] in listed and created["key"] not in listed
    shown = ok("update", created["id"], "--rpm", "none", "--tpm", "500")
    assert "tpm=500" in shown and "rpm=" not in shown
    rotated = json.loads(ok("rotate", created["id"], "--json"))
    assert rotated["id"] == created["id"] and rotated["key"] != created["key"]
    assert rotated["previous_valid_until"] is None
    graced = run(app, ["rotate", created["id"], "--grace", "12h", "-c", str(config)])
    assert graced.exit_code == 0 and "The old secret works until" in graced.stderr
    assert KEY_RE.match(graced.stdout.strip())  # stdout: the new secret alone
    assert "old secret works until" in ok("show", created["id"])
    bad = run(app, ["rotate", created["id"], "--grace", "soon", "-c", str(config)])
    assert bad.exit_code == 1 and "--grace: not a duration" in bad.output
    assert "[revoked]" in ok("revoke", created["id"])
    assert "deleted team eng" in ok("teams", "delete", "eng")
