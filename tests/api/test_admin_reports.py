"""Finance admin endpoints: reports, summary, reconcile, dashboard login and cookie rules."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engines.standin.process import StandinProcess
from gateway.api.admin import SESSION_COOKIE, issue_session
from gateway.config import Settings
from tests.support import (
    ADMIN_TOKEN,
    CLIENT_KEY,
    EngineSpec,
    RunningGateway,
    gateway_config,
    serve_in_thread,
)

MSGS = [{"role": "user", "content": "count to three"}]
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def specs(pair: dict[str, StandinProcess]) -> list[EngineSpec]:
    return [
        EngineSpec("small-0", pair["small"].base_url, "small", "standin-small"),
        EngineSpec("large-0", pair["large"].base_url, "large", "standin-large"),
    ]


@pytest.fixture(scope="module")
def gateway(
    standin_pair: dict[str, StandinProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp: Path = tmp_path_factory.mktemp("finance")
    cfg = gateway_config(tmp, specs(standin_pair))
    with serve_in_thread(Settings(**cfg)) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0)
        for model, n in (("small", 4), ("large", 2)):
            for _ in range(n):
                client.chat.completions.create(model=model, messages=MSGS, max_tokens=3)  # type: ignore[call-overload]
        writer = gw.services.ledger.writer
        deadline = time.monotonic() + 10
        while writer.stats().written < 6:  # the writer flushes every flush_interval_s
            assert time.monotonic() < deadline, writer.stats()
            time.sleep(0.05)
        yield gw


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, timeout=10, follow_redirects=False) as c:
        yield c


def test_reports_need_the_admin_token(http: httpx.Client) -> None:
    assert http.get("/admin/reports").status_code == 401
    client_key = http.get("/admin/reports", headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert client_key.status_code == 401
    assert client_key.json()["error"]["code"] == "invalid_admin_token"


def test_report_json_groups_by_tier(gateway: RunningGateway, http: httpx.Client) -> None:
    body = http.get("/admin/reports", params={"group_by": "tier"}, headers=ADMIN).json()
    by_tier = {r["tier"]: r for r in body["rows"]}
    assert by_tier["small"]["requests"] == 4 and by_tier["large"]["requests"] == 2
    assert by_tier["small"]["completion_tokens"] == 12
    assert body["totals"]["cost_nusd"] == sum(r["cost_nusd"] for r in body["rows"])
    # Every request named its tier: routing chose nothing, so it saved nothing.
    assert by_tier["small"]["savings_nusd"] == 0 and by_tier["large"]["savings_nusd"] == 0
    assert by_tier["small"]["counterfactual_nusd"] == by_tier["small"]["cost_nusd"] > 0


def test_report_csv_download(gateway: RunningGateway, http: httpx.Client) -> None:
    resp = http.get(
        "/admin/reports",
        params=[("group_by", "team"), ("group_by", "day"), ("format", "csv")],
        headers=ADMIN,
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    assert 'filename="tollgate-report-team-day.csv"' in resp.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [(r["team"], int(r["requests"])) for r in rows] == [("qa", 6)]


def test_report_rejects_unknown_groupings_and_dates(http: httpx.Client) -> None:
    bad = http.get("/admin/reports", params={"group_by": "colour"}, headers=ADMIN)
    assert bad.status_code == 400 and "unknown group_by" in bad.json()["error"]["message"]
    when = http.get("/admin/reports", params={"start": "last tuesday"}, headers=ADMIN)
    assert when.status_code == 400 and when.json()["error"]["param"] == "start"


def test_summary(gateway: RunningGateway, http: httpx.Client) -> None:
    body = http.get("/admin/reports/summary", headers=ADMIN).json()
    assert body["totals"]["requests"] == 6
    assert {r["tier"] for r in body["by_tier"]} == {"small", "large"}
    assert body["by_status"][0]["status"] == "ok"
    assert body["top_keys"][0]["key_id"] == "static-0"
    assert body["price_versions"] == ["standin-large@2020-01-01", "standin-small@2020-01-01"]
    assert body["writer"]["database_up"] is True and body["writer"]["dropped"] == 0


def test_reconcile_with_the_local_quota_store(gateway: RunningGateway, http: httpx.Client) -> None:
    body = http.get("/admin/reconcile", headers=ADMIN).json()
    assert body["ok"] is True, body
    assert body["ledger_total_nusd"] == body["counter_total_nusd"] > 0


def test_dashboard_login_with_token_sets_a_strict_cookie(
    gateway: RunningGateway, http: httpx.Client
) -> None:
    anon = http.get("/admin/dashboard")
    assert anon.status_code == 303 and anon.headers["location"] == "/admin/login"
    wrong = http.get("/admin/dashboard", params={"token": "tg-not-the-admin-token"})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert SESSION_COOKIE not in wrong.cookies
    ok = http.get("/admin/dashboard", params={"token": ADMIN_TOKEN, "start": "2020-01-01"})
    assert ok.status_code == 303
    assert ok.headers["location"] == "/admin/dashboard?start=2020-01-01"  # token dropped
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/admin" in cookie
    assert ADMIN_TOKEN.lower() not in cookie
    page = http.get("/admin/dashboard")
    assert page.status_code == 200 and "<svg" in page.text
    assert "https://" not in page.text and "<script" not in page.text  # offline, no assets


def test_session_cookie_reads_but_never_writes(gateway: RunningGateway) -> None:
    token = ADMIN_TOKEN
    with httpx.Client(base_url=gateway.base_url, timeout=10) as c:
        c.cookies.set(SESSION_COOKIE, issue_session(token), path="/admin")
        assert c.get("/admin/reports").status_code == 200
        # a forged cross-site POST carrying the cookie changes nothing
        post = c.post("/admin/teams", json={"name": "csrf"})
        assert post.status_code == 401
        c.cookies.set(SESSION_COOKIE, issue_session(token, now=0), path="/admin")  # expired
        assert c.get("/admin/reports").status_code == 401
        forged = issue_session(token).split(".")[0] + ".deadbeef"
        c.cookies.set(SESSION_COOKIE, forged, path="/admin")
        assert c.get("/admin/reports").status_code == 401


def test_login_form_and_logout(http: httpx.Client) -> None:
    form = http.get("/admin/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    bad = http.post("/admin/login", data={"token": "nope", "next": "/admin/dashboard"})
    assert bad.status_code == 401
    good = http.post("/admin/login", data={"token": ADMIN_TOKEN, "next": "https://evil.example/"})
    assert good.status_code == 303 and good.headers["location"] == "/admin/dashboard"
    assert http.get("/admin/dashboard").status_code == 200
    out = http.get("/admin/logout")
    assert out.status_code == 303 and 'tollgate_admin=""' in out.headers["set-cookie"]
    assert http.get("/admin/dashboard").status_code == 303


def test_reports_when_the_ledger_is_disabled(
    standin_pair: dict[str, StandinProcess], tmp_path: Path
) -> None:
    cfg = gateway_config(tmp_path, specs(standin_pair), ledger={"enabled": False})
    with serve_in_thread(Settings(**cfg)) as gw:
        resp = httpx.get(gw.base_url + "/admin/reports", headers=ADMIN)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "ledger_disabled"


def test_wrong_admin_tokens_lock_the_address_out_for_a_while(
    standin_pair: dict[str, StandinProcess], tmp_path: Path
) -> None:
    cfg = gateway_config(
        tmp_path, specs(standin_pair), auth={"admin_max_failures": 3, "admin_lockout_s": 60}
    )
    with serve_in_thread(Settings(**cfg)) as gw, httpx.Client(base_url=gw.base_url) as http:
        wrong = {"authorization": "Bearer tg-not-the-admin-token-0000000000"}
        assert http.get("/admin/engines", headers=wrong).status_code == 401
        assert http.post("/admin/login", data={"token": "guess"}).status_code == 401
        assert http.get("/admin/dashboard", params={"token": "guess2"}).status_code == 401
        # Locked out now, even with the right token, on the API and the login page.
        locked = http.get("/admin/engines", headers=ADMIN)
        assert locked.status_code == 429
        assert locked.json()["error"]["code"] == "too_many_failed_logins"
        assert 0 < int(locked.headers["retry-after"]) <= 60
        page = http.post("/admin/login", data={"token": ADMIN_TOKEN})
        assert page.status_code == 429 and "Too many failed admin logins" in page.text
        # Client keys are not affected.
        client = openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0)
        client.chat.completions.create(model="small", messages=MSGS, max_tokens=1)  # type: ignore[call-overload]
