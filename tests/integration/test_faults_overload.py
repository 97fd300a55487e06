"""Overload and refusals, end to end: queue build-up sheds, budget refusals are final.

A real gateway, the official ``openai`` client, and stand-in engines that fail on
purpose (``engines.standin``; the fleet is ``tests/support/fleet.py``). Each test states
the expected outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from gateway.auth import Principal
from gateway.errors import QuotaExceededError
from gateway.quotas.base import Demand, Reservation
from tests.support import CLIENT_KEY, serve_in_thread
from tests.support.fleet import (
    MSGS,
    Engines,
    client,
    settings,
    spec,
)
from tests.support.standin import set_fault as fault
from tests.support.standin import stats

# ---------------------------------------------------------------- queue build-up


async def test_queue_build_up_sheds_with_503_and_retry_after(
    fleet: Engines, tmp_path: Path
) -> None:
    """Expected: cap 1 + queue 1 on the only engine: the first request runs, the second
    waits, the third is shed at once with 503 engine_overloaded + Retry-After; when the
    first leaves, the waiting one is served."""
    cfg = settings(
        tmp_path, [spec(fleet, "small-a", max_concurrency=1, max_queue=1, queue_timeout_s=30)],
        {"fallback": False},
    )  # fmt: skip
    fault(fleet["small-a"], mode="hang", count=1)
    with serve_in_thread(cfg) as gw:
        ac = openai.AsyncOpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        engine = gw.services.pool.engines["small-a"]
        pool = gw.services.pool

        async def consume() -> str:
            s = await ac.chat.completions.create(
                model="small", messages=MSGS, max_tokens=2, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])

        async def until_async(check: Callable[[], bool]) -> None:
            for _ in range(1000):
                if check():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("condition not reached in time")

        first = asyncio.create_task(consume())  # hangs on the engine, holding the slot
        await until_async(lambda: engine.in_flight == 1)
        second = asyncio.create_task(consume())
        await until_async(lambda: pool.queue_depth(engine) == 1)
        with pytest.raises(openai.APIStatusError) as exc:
            await ac.chat.completions.create(model="small", messages=MSGS, max_tokens=2)
        assert exc.value.status_code == 503
        assert exc.value.response.headers["retry-after"] == "1"
        assert exc.value.response.json()["error"]["code"] == "engine_overloaded"
        first.cancel()  # the client leaves: its slot passes to the waiting request
        assert await second == " tok1 tok2"
        await until_async(lambda: engine.in_flight == 0)
        await ac.close()


# ---------------------------------------------------------------- budget refusals


class RefusingQuotas:
    """A quota store whose every key is out of budget."""

    async def reserve(self, principal: Principal, request_id: str, demand: Demand) -> Reservation:
        raise QuotaExceededError("Budget exhausted for this key.")

    async def settle(self, reservation: Reservation, actual: Demand) -> None:
        return None

    async def budget_remaining_nusd(self, principal: Principal) -> int | None:
        return 0

    async def aclose(self) -> None:
        return None


def test_budget_refusal_is_never_retried_or_fallen_back(fleet: Engines, tmp_path: Path) -> None:
    """Expected: 429 insufficient_quota, and no engine of either tier sees the request."""
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "large-a")])
    with serve_in_thread(cfg, quotas=RefusingQuotas()) as gw:
        c = client(gw)
        for model, stream in (("small", False), ("auto", False), ("large", True)):
            with pytest.raises(openai.RateLimitError) as exc:
                c.chat.completions.create(model=model, messages=MSGS, max_tokens=2, stream=stream)
            assert exc.value.response.json()["error"]["code"] == "insufficient_quota"
    assert stats(fleet["small-a"])["received"] == 0
    assert stats(fleet["large-a"])["received"] == 0
