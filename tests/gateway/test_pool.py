from __future__ import annotations

import asyncio

import pytest

from gateway.config import EngineSettings
from gateway.errors import OverloadedError
from gateway.routing.pool import EnginePool


def pool(cap: int = 1, queue: int = 1, timeout: float = 0.2) -> EnginePool:
    es = EngineSettings(
        name="e0",
        url="http://127.0.0.1:1",
        tier="small",
        model="m",
        max_concurrency=cap,
        max_queue=queue,
        queue_timeout_s=timeout,
    )
    return EnginePool([es])


async def test_cap_then_queue_then_shed() -> None:
    p = pool(cap=1, queue=1)
    e = p.engines["e0"]
    first = await p.acquire(e)
    waiter = asyncio.create_task(p.acquire(e))
    await asyncio.sleep(0)
    assert p.queue_depth(e) == 1
    with pytest.raises(OverloadedError) as exc:
        await p.acquire(e)  # queue full
    assert exc.value.headers["Retry-After"] == "1"
    first.release()
    second = await waiter
    assert e.in_flight == 1 and p.queue_depth(e) == 0
    second.release()
    second.release()  # idempotent
    assert e.in_flight == 0


async def test_queue_wait_times_out_with_retry_after() -> None:
    p = pool(cap=1, queue=4, timeout=0.05)
    e = p.engines["e0"]
    held = await p.acquire(e)
    with pytest.raises(OverloadedError, match="stayed at capacity") as exc:
        await p.acquire(e)
    assert int(exc.value.headers["Retry-After"]) >= 1
    assert p.queue_depth(e) == 0
    held.release()
    assert e.in_flight == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    p = pool(cap=1, queue=4, timeout=5)
    e = p.engines["e0"]
    held = await p.acquire(e)
    waiter = asyncio.create_task(p.acquire(e))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    held.release()
    assert e.in_flight == 0 and p.queue_depth(e) == 0
