"""Admission and routing agree under a key's budget (issue 14, item 4), on the mock
transport with the in-process quota store: the decision, what is reserved, the route.

Prices (tests.support.gateway_config): small 0.05 / 0.2 USD per million tokens, large
0.5 / 1.5. A prompt of ~2,000 bytes with max_tokens 1,000 may cost ~$0.0003 on the small
tier and ~$0.0026 on the large one; a $0.001 budget affords the first only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import build_services
from gateway.auth import Limits, Principal
from gateway.config import Settings
from gateway.errors import GatewayError, QuotaExceededError
from gateway.protocol import Endpoint
from gateway.request.tiering import RESCUE_REASON
from gateway.services import Services
from gateway.upstream.mock import MockReply, MockRequest, MockTransport
from tests.support import CLIENT_KEY, EngineSpec, ListRecorder, gateway_config

AUTH = f"Bearer {CLIENT_KEY}"
ENGINES = [
    EngineSpec("small-0", "http://small-0", "small", "model-small"),
    EngineSpec("large-0", "http://large-0", "large", "model-large"),
]
LONG = "word " * 400  # ~2,000 bytes: over the rules' 100-token small limit
AFFORDS_SMALL_ONLY = 0.001
USAGE = {"prompt_tokens": 500, "completion_tokens": 10, "total_tokens": 510}


def answer(r: MockRequest) -> MockReply:
    return MockReply.json(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
        | {"usage": USAGE}
    )


def chat(model: str = "auto", text: str = LONG, max_tokens: int = 1000) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return orjson.dumps(body | {"max_tokens": max_tokens})


@asynccontextmanager
async def gateway(
    tmp_path: Path,
    budget_usd: float,
    handler: Callable[[MockRequest], MockReply] = answer,
    params: dict[str, Any] | None = None,
    policy: str = "rules",
) -> AsyncIterator[tuple[Services, MockTransport, ListRecorder]]:
    cfg = gateway_config(
        tmp_path,
        ENGINES,
        ledger={"enabled": False},
        auth={
            "key_store": False,
            "static_keys": [
                {"key": CLIENT_KEY, "name": "t", "limits": {"budget_total_usd": budget_usd}}
            ],
        },
        routing={"policy": policy, "params": {"max_prompt_tokens_small": 100, **(params or {})}},
    )
    settings = Settings.model_validate(cfg)
    transport = MockTransport(handler, timeouts=settings.timeouts)
    recorder = ListRecorder()
    async with build_services(
        settings, transport=transport, recorder=recorder, monitor=False
    ) as svc:
        yield svc, transport, recorder


async def handle(svc: Services, body: bytes) -> Any:
    ctx = svc.pipeline.new_context("req-1", Endpoint.CHAT)
    return await svc.pipeline.handle(ctx, AUTH, body)


async def spent(svc: Services) -> int:
    """Spend counted against the key (settled plus held), from its remaining budget."""
    principal = await svc.authenticator.authenticate(CLIENT_KEY)
    remaining = await svc.quotas.budget_remaining_nusd(principal)
    assert remaining is not None
    assert principal.limits.budget_total_usd is not None
    return int(principal.limits.budget_total_usd * 1e9) - remaining


async def test_an_auto_request_affordable_only_small_is_rescued_to_small(tmp_path: Path) -> None:
    async with gateway(tmp_path, AFFORDS_SMALL_ONLY) as (svc, mock, rec):
        resp = await handle(svc, chat())
        left = await spent(svc)
    assert resp.status_code == 200
    assert [r.engine.tier for r in mock.requests] == ["small"]
    assert resp.headers["x-tollgate-tier"] == "small"
    assert resp.headers["x-tollgate-route-reason"] == f"rules:long_prompt;{RESCUE_REASON}"
    (r,) = rec.records
    assert r.route_reason == f"rules:long_prompt;{RESCUE_REASON}" and r.tier == "small"
    assert left == r.cost_nusd == 500 * 50 + 10 * 200  # settled to the small tier's price


async def test_an_affordable_auto_request_goes_where_the_policy_says(tmp_path: Path) -> None:
    async with gateway(tmp_path, 1.0) as (svc, mock, _rec):
        resp = await handle(svc, chat())
    assert [r.engine.tier for r in mock.requests] == ["large"]
    assert resp.headers["x-tollgate-route-reason"] == "rules:long_prompt"


async def test_a_rescued_request_never_falls_back_to_the_dearer_tier(tmp_path: Path) -> None:
    def small_down(r: MockRequest) -> MockReply:
        return MockReply(status=503) if r.engine.tier == "small" else answer(r)

    async with gateway(tmp_path, AFFORDS_SMALL_ONLY, small_down) as (svc, mock, _rec):
        with pytest.raises(GatewayError) as exc:
            await handle(svc, chat())
        left = await spent(svc)
    assert exc.value.status_code == 503
    assert {r.engine.tier for r in mock.requests} == {"small"}  # large was not reserved
    assert left == 0  # nothing served, nothing held


async def test_a_request_that_could_afford_large_still_falls_back(tmp_path: Path) -> None:
    def large_down(r: MockRequest) -> MockReply:
        return MockReply(status=503) if r.engine.tier == "large" else answer(r)

    async with gateway(tmp_path, 1.0, large_down) as (svc, mock, _rec):
        resp = await handle(svc, chat())
    assert [r.engine.tier for r in mock.requests] == ["large", "small"]
    assert resp.headers["x-tollgate-route-reason"] == "rules:long_prompt;fallback_from:large"


async def test_an_explicit_model_name_is_refused_not_rescued(tmp_path: Path) -> None:
    async with gateway(tmp_path, AFFORDS_SMALL_ONLY) as (svc, mock, _rec):
        with pytest.raises(QuotaExceededError) as exc:
            await handle(svc, chat(model="large"))
    assert exc.value.status_code == 429 and not mock.requests
    assert "cheapest" not in exc.value.message


async def test_when_even_the_cheapest_tier_is_over_budget_it_is_429(tmp_path: Path) -> None:
    async with gateway(tmp_path, 0.0002) as (svc, mock, _rec):
        with pytest.raises(QuotaExceededError) as exc:
            await handle(svc, chat())
        left = await spent(svc)
    assert exc.value.status_code == 429 and not mock.requests
    assert exc.value.message.startswith("Even the cheapest tier (small) is over budget.")
    assert "Budget exhausted for total spend" in exc.value.message
    assert left == 0  # the refused attempts held nothing


async def test_a_prompt_too_long_for_the_small_context_is_not_rescued(tmp_path: Path) -> None:
    engines = [EngineSpec("small-0", "http://small-0", "small", "model-small")]
    engines[0].extra = {"max_model_len": 512}
    cfg = gateway_config(
        tmp_path,
        [*engines, ENGINES[1]],
        ledger={"enabled": False},
        auth={
            "key_store": False,
            "static_keys": [
                {"key": CLIENT_KEY, "limits": {"budget_total_usd": AFFORDS_SMALL_ONLY}}
            ],
        },
        routing={"params": {"max_prompt_tokens_small": 100}},
    )
    settings = Settings.model_validate(cfg)
    transport = MockTransport(answer, timeouts=settings.timeouts)
    async with build_services(
        settings, transport=transport, recorder=ListRecorder(), monitor=False
    ) as svc:
        with pytest.raises(QuotaExceededError) as exc:
            await handle(svc, chat())
    assert "cheapest" not in exc.value.message  # no cheaper tier could take it
    assert not transport.requests


async def test_budget_low_still_steers_within_what_was_reserved(tmp_path: Path) -> None:
    """The route stage reruns the policy with the remaining budget the reservation
    reported: the large tier's reservation covers the small tier, so ``budget:low``."""
    async with gateway(tmp_path, 0.01, policy="budget", params={"low_usd": 0.009}) as (
        svc,
        mock,
        _rec,
    ):
        resp = await handle(svc, chat())
    assert [r.engine.tier for r in mock.requests] == ["small"]
    assert resp.headers["x-tollgate-route-reason"] == "rules:long_prompt;budget:low"


async def test_a_key_that_forces_its_tier_is_not_rescued(tmp_path: Path) -> None:
    async with gateway(tmp_path, 1.0) as (svc, _mock, _rec):
        forced = Principal(
            key_id="forced",
            key_prefix="tg-forced",
            name="forced",
            limits=Limits(budget_total_usd=AFFORDS_SMALL_ONLY),
            routing={"force_tier": "large"},
        )
        ctx = svc.pipeline.new_context("req-2", Endpoint.CHAT)
        with pytest.raises(QuotaExceededError):
            await svc.pipeline.admission.admit(ctx, forced, chat(text="hi"))
        plain = Principal(
            key_id="plain",
            key_prefix="tg-plain",
            name="plain",
            limits=Limits(budget_total_usd=AFFORDS_SMALL_ONLY),
        )
        admitted = await svc.pipeline.admission.admit(ctx, plain, chat())
    assert admitted.plan is not None and admitted.plan.rescued
    assert admitted.plan.tier == "small" and admitted.plan.covered == frozenset({"small"})
    assert admitted.reservation.demand.cost_nusd < AFFORDS_SMALL_ONLY * 1e9
