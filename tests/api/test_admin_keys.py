"""The admin key API on a served gateway, and the keys it makes used with ``openai``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engines.standin.process import StandinProcess
from gateway.config import Settings
from gateway.db import make_engine
from gateway.keys import KeyStore
from tests.support import (
    ADMIN_TOKEN,
    CLIENT_KEY,
    EngineSpec,
    RunningGateway,
    gateway_config,
    serve_in_thread,
)

MSGS = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gateway(
    standin_pair: dict[str, StandinProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp: Path = tmp_path_factory.mktemp("admin-keys")
    specs = [
        EngineSpec("small-0", standin_pair["small"].base_url, "small", "standin-small"),
        EngineSpec("large-0", standin_pair["large"].base_url, "large", "standin-large"),
    ]
    cfg = gateway_config(tmp, specs, quotas={"backend": "local"})
    settings = Settings(**cfg)
    engine = make_engine(settings.ledger.url)
    KeyStore(engine).create_tables()
    engine.dispose()
    with serve_in_thread(settings) as gw:
        yield gw


@pytest.fixture
def admin(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.base_url + "/admin",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    ) as c:
        yield c


def client_for(gateway: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0, timeout=10)


def new_key(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    r = admin.post("/keys", json={"name": "svc", **body})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def fresh_minute(margin: float = 8.0) -> None:
    """rpm windows are UTC minutes: do not straddle one."""
    into = time.time() % 60
    if into > 60 - margin:
        time.sleep(60 - into + 0.05)


def test_admin_routes_need_the_admin_token(gateway: RunningGateway) -> None:
    url = gateway.base_url + "/admin/keys"
    assert httpx.get(url).status_code == 401
    r = httpx.get(url, headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"
    r = httpx.post(url, json={"name": "x"}, headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 401


def test_create_shows_the_key_once(admin: httpx.Client) -> None:
    r = admin.post("/keys", json={"name": "once", "limits": {"rpm": 5}})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    created = r.json()
    assert created["key"].startswith("tg-") and len(created["key"]) == 43
    assert created["prefix"] == created["key"][:10]
    assert created["limits"]["rpm"] == 5
    shown = admin.get(f"/keys/{created['id']}").json()
    listed = admin.get("/keys").json()["data"]
    assert "key" not in shown and created["key"] not in str(listed)
    assert created["id"] in [k["id"] for k in listed]


def test_a_new_key_works_with_its_limits_in_the_headers(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    fresh_minute()
    created = new_key(admin, limits={"rpm": 2, "tpm": 10_000})
    client = client_for(gateway, created["key"])
    raw = client.chat.completions.with_raw_response.create(
        model="small", messages=MSGS, max_tokens=5
    )
    assert raw.parse().choices[0].message.content == " tok1 tok2 tok3 tok4 tok5"
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-limit-tokens"] == "10000"
    client.chat.completions.create(model="small", messages=MSGS, max_tokens=5)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="small", messages=MSGS, max_tokens=5)
    err = info.value
    assert err.code == "rate_limit_exceeded"
    assert "requests per minute" in err.message and "limit 2, used 2" in err.message
    assert int(err.response.headers["retry-after"]) >= 1
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_budget_refusal_is_insufficient_quota(admin: httpx.Client, gateway: RunningGateway) -> None:
    created = new_key(admin, limits={"budget_daily_usd": "0.0000001"})
    with pytest.raises(openai.RateLimitError) as info:
        client_for(gateway, created["key"]).chat.completions.create(
            model="large", messages=MSGS, max_tokens=100
        )
    assert info.value.code == "insufficient_quota"
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "insufficient_quota"
    assert "daily spend" in info.value.message


def test_models_outside_the_key_scope_are_403(admin: httpx.Client, gateway: RunningGateway) -> None:
    created = new_key(admin, models=["small"])
    client = client_for(gateway, created["key"])
    client.chat.completions.create(model="small", messages=MSGS, max_tokens=1)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="large", messages=MSGS, max_tokens=1)


def test_models_lists_only_what_the_key_may_use(
    admin: httpx.Client, gateway: RunningGateway
) -> None:
    scoped = client_for(gateway, new_key(admin, models=["small"])["key"])
    assert [m.id for m in scoped.models.list()] == ["small"]
    assert scoped.models.retrieve("small").id == "small"
    with pytest.raises(openai.PermissionDeniedError):
        scoped.models.retrieve("large")
    unscoped = client_for(gateway, new_key(admin)["key"])
    assert {"small", "large"} <= {m.id for m in unscoped.models.list()}


def test_update_takes_effect_at_once(admin: httpx.Client, gateway: RunningGateway) -> None:
    created = new_key(admin, limits={"concurrency": 0})
    client = client_for(gateway, created["key"])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="small", messages=MSGS, max_tokens=1)
    r = admin.patch(f"/keys/{created['id']}", json={"limits": {"concurrency": 4}})
    assert r.status_code == 200 and r.json()["limits"]["concurrency"] == 4
    client.chat.completions.create(model="small", messages=MSGS, max_tokens=1)


def test_rotate_and_revoke(admin: httpx.Client, gateway: RunningGateway) -> None:
    created = new_key(admin)
    old = client_for(gateway, created["key"])
    old.chat.completions.create(model="small", messages=MSGS, max_tokens=1)
    r = admin.post(f"/keys/{created['id']}/rotate")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    rotated = r.json()
    assert rotated["id"] == created["id"] and rotated["key"] != created["key"]
    with pytest.raises(openai.AuthenticationError):
        old.chat.completions.create(model="small", messages=MSGS, max_tokens=1)
    new = client_for(gateway, rotated["key"])
    new.chat.completions.create(model="small", messages=MSGS, max_tokens=1)
    r = admin.delete(f"/keys/{created['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError):
        new.chat.completions.create(model="small", messages=MSGS, max_tokens=1)
    assert created["id"] not in [k["id"] for k in admin.get("/keys").json()["data"]]
    revoked = admin.get("/keys", params={"include_revoked": "true"}).json()["data"]
    assert created["id"] in [k["id"] for k in revoked]


def test_rotate_with_a_grace_period(admin: httpx.Client, gateway: RunningGateway) -> None:
    created = new_key(admin)
    r = admin.post(f"/keys/{created['id']}/rotate", json={"grace_seconds": 3600})
    assert r.status_code == 200 and r.json()["previous_valid_until"] is not None
    for secret in (created["key"], r.json()["key"]):  # both work during the grace period
        client_for(gateway, secret).chat.completions.create(
            model="small", messages=MSGS, max_tokens=1
        )
    r = admin.post(f"/keys/{created['id']}/rotate", json={"grace_seconds": "soon"})
    assert r.status_code == 400 and "grace_seconds" in r.json()["error"]["message"]
    r = admin.post(f"/keys/{created['id']}/rotate", json={"grace_seconds": 90 * 86400})
    assert r.status_code == 400 and "grace_seconds" in r.json()["error"]["message"]


def test_teams_bound_their_keys(admin: httpx.Client) -> None:
    r = admin.post("/teams", json={"name": "ml", "models": ["small"], "limits": {"rpm": 50}})
    assert r.status_code == 201
    assert admin.post("/teams", json={"name": "ml"}).status_code == 409
    r = admin.post("/keys", json={"name": "x", "team": "ml", "limits": {"rpm": 51}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "scope_exceeds_team"
    r = admin.post("/keys", json={"name": "x", "team": "ml", "models": ["large"]})
    assert r.status_code == 400 and "large" in r.json()["error"]["message"]
    key = new_key(admin, team="ml", limits={"rpm": 10})
    assert admin.get("/teams/ml").json()["limits"]["rpm"] == 50
    assert "ml" in [t["name"] for t in admin.get("/teams").json()["data"]]
    r = admin.patch("/teams/ml", json={"limits": {"tpm": 1000}})
    assert r.json()["limits"] == {
        "rpm": 50,
        "tpm": 1000,
        "concurrency": None,
        "budget_daily_usd": None,
        "budget_monthly_usd": None,
        "budget_total_usd": None,
    }
    assert admin.delete("/teams/ml").status_code == 409
    admin.delete(f"/keys/{key['id']}")
    assert admin.delete("/teams/ml").status_code == 204
    assert admin.get("/teams/ml").status_code == 404


def test_bad_input_names_the_field(admin: httpx.Client) -> None:
    r = admin.post("/keys", json={"name": "x", "limits": {"rpm": -1}})
    assert r.status_code == 400 and "limits.rpm" in r.json()["error"]["message"]
    r = admin.post("/keys", json={"name": "x", "api_base": "http://evil"})
    assert r.status_code == 400 and "api_base" in r.json()["error"]["message"]
    r = admin.post("/keys", json={"name": "x", "models": ["nope"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_model"
    assert admin.get("/keys/key_missing").status_code == 404
    assert admin.patch("/keys/key_missing", json={}).status_code == 404


def test_quota_status(admin: httpx.Client) -> None:
    assert admin.get("/quotas/status").json()["backend"] == "local"


def test_metadata_with_an_integer_beyond_64_bits_is_a_400(admin: httpx.Client) -> None:
    """Found by the fuzzer: the size check's encoder raised a TypeError, a 500."""
    huge = {"metadata": {"n": -3269514514147486203904}}
    for path, body in (("/keys", {"name": "big"}), ("/teams", {"name": "bigteam"})):
        refused = admin.post(path, json={**body, **huge})
        assert refused.status_code == 400, refused.text
        assert "64 bits" in refused.json()["error"]["message"]


def test_limits_beyond_the_database_integer_are_a_400(admin: httpx.Client) -> None:
    """Found by the fuzzer: a tpm of 2**100 reached SQLite and overflowed, a 500."""
    limits = {"limits": {"tpm": 2068204786294083996958068834304}}
    for path, body in (("/keys", {"name": "big"}), ("/teams", {"name": "bigtpm"})):
        refused = admin.post(path, json={**body, **limits})
        assert refused.status_code == 400, refused.text
        assert "limits.tpm" in refused.json()["error"]["message"]
