"""``POST /v1/feedback`` on a served gateway, with the ledger on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from engines.standin.process import StandinProcess
from gateway.config import Settings
from gateway.ledger.feedback import Feedback
from tests.support import (
    CLIENT_KEY,
    EngineSpec,
    PostgresCluster,
    RunningGateway,
    gateway_config,
    serve_in_thread,
)

OTHER_KEY = "tg-test-other-key-000001"
LIMITED_KEY = "tg-test-limited-key-0001"
HELLO: Any = [{"role": "user", "content": "hello! what is the capital of Peru?"}]


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def gateway(
    request: pytest.FixtureRequest,
    standin_pair: dict[str, StandinProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("feedback")
    specs = [
        EngineSpec("small-0", standin_pair["small"].base_url, "small", "standin-small"),
        EngineSpec("large-0", standin_pair["large"].base_url, "large", "standin-large"),
    ]
    cfg = gateway_config(
        tmp,
        specs,
        routing={
            "policy": "learned",
            "params": {"target_large_share": 0.3},
            "state_file": str(tmp / "state.json"),
        },
    )
    cfg["auth"]["static_keys"] += [
        {"key": OTHER_KEY, "name": "other", "team": "qa"},
        {"key": LIMITED_KEY, "name": "limited", "team": "qa", "limits": {"rpm": 2}},
    ]
    if request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("pg")
        cfg["ledger"]["url"] = cluster.url(cluster.create_database())
    with serve_in_thread(Settings(**cfg)) as gw:
        yield gw


def post(
    gw: RunningGateway, key: str | None, body: Any, raw: bytes | None = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        headers["content-type"] = "application/json"
        return httpx.post(gw.v1 + "/feedback", content=raw, headers=headers, timeout=10)
    return httpx.post(gw.v1 + "/feedback", json=body, headers=headers, timeout=10)


def answered(gw: RunningGateway, key: str = CLIENT_KEY) -> str:
    """An auto request's id (the learned policy routes and scores it)."""
    client = openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, max_tokens=8
    )
    assert raw.headers["x-tollgate-route-reason"].startswith("learned:")
    return raw.headers["x-request-id"]


def test_feedback_is_stored_then_replaced(gateway: RunningGateway) -> None:
    rid = answered(gateway)
    first = post(gateway, CLIENT_KEY, {"request_id": rid, "label": "good"})
    assert first.status_code == 200, first.text
    assert first.json() == {
        "object": "feedback",
        "request_id": rid,
        "score": 1.0,
        "label": "good",
        "replaced": False,
    }
    again = post(gateway, CLIENT_KEY, {"request_id": rid, "score": 0.2})
    assert again.status_code == 200 and again.json()["replaced"] is True
    ledger = gateway.services.ledger
    assert ledger.feedback.get("static-0", rid) == Feedback(rid, 0.2, None)
    record = ledger.store.get(rid)
    assert record is not None and record.route_score is not None
    assert record.route_features is not None and len(record.route_features) == 12


def test_another_keys_request_or_an_unknown_one_is_404(gateway: RunningGateway) -> None:
    rid = answered(gateway)
    for key, request_id in ((OTHER_KEY, rid), (CLIENT_KEY, "no-such-request")):
        r = post(gateway, key, {"request_id": request_id, "label": "bad"})
        assert r.status_code == 404
        error = r.json()["error"]
        assert error["param"] == "request_id" and error["code"] == "request_not_found"
    assert gateway.services.ledger.feedback.get("static-1", rid) is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request_id": "r1"}, "score"),
        ({"request_id": "r1", "score": 0.5, "label": "good"}, "score"),
        ({"request_id": "r1", "score": 1.5}, "score"),
        ({"request_id": "r1", "score": "0.5"}, "score"),
        ({"request_id": "r1", "score": True}, "score"),
        ({"request_id": "r1", "label": "meh"}, "label"),
        ({"request_id": "bad id!", "label": "good"}, "request_id"),
        ({"request_id": 7, "label": "good"}, "request_id"),
        ({"label": "good"}, "request_id"),
        ({"request_id": "r1", "label": "good", "tier": "small"}, "tier"),
        ([1, 2], None),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    gateway: RunningGateway, body: Any, param: str | None
) -> None:
    r = post(gateway, CLIENT_KEY, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_not_json_no_key_and_a_huge_body(gateway: RunningGateway) -> None:
    assert post(gateway, CLIENT_KEY, None, raw=b"{not json").status_code == 400
    assert post(gateway, None, {"request_id": "r1", "label": "good"}).status_code == 401
    huge = b'{"request_id": "' + b"a" * 5000 + b'", "label": "good"}'
    assert post(gateway, CLIENT_KEY, None, raw=huge).status_code == 413


def test_feedback_counts_against_the_keys_rpm(gateway: RunningGateway) -> None:
    if time.time() % 60 > 58:  # rpm windows are UTC minutes: start well inside one
        time.sleep(2.5)
    statuses = [
        post(gateway, LIMITED_KEY, {"request_id": f"none-{i}", "label": "good"}) for i in range(3)
    ]
    assert [r.status_code for r in statuses] == [404, 404, 429]
    assert "retry-after" in statuses[2].headers
    assert statuses[2].json()["error"]["type"] == "rate_limit_exceeded"
