"""A child process for the multi-process tests: many concurrent reservations, one key.

Run as ``python -m tests.quotas.hammer URL MODE START_AT``; prints one JSON line.
``rpm``: 100 concurrent reservations against rpm=50 (key ``rpm``).
``budget``: reserve 10 000 nano-USD worst case, settle a pseudo-random 1 000-10 000, in
waves of 20 concurrent requests, until refused (key ``budget``, total budget 1 000 000).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from gateway.auth import Limits, Principal
from gateway.config import QuotaSettings
from gateway.errors import RateLimitError
from gateway.quotas.base import Demand
from gateway.quotas.redis import RedisQuotaStore

#: Every process uses this instant, so all share one rpm window whenever the test runs.
FIXED_NOW = 1_773_144_005.0
RPM_LIMIT = 50
BUDGET_NUSD = 1_000_000
WORST_NUSD = 10_000


async def main(url: str, mode: str, start_at: float) -> dict[str, int]:
    settings = QuotaSettings.model_validate({"backend": "redis", "redis_url": url})
    store = RedisQuotaStore(settings, clock=lambda: FIXED_NOW)
    rng = random.Random()
    admitted = refused = spent = 0
    await store.ping()  # connect before the start line
    await asyncio.sleep(max(0.0, start_at - time.time()))
    try:
        if mode == "rpm":
            p = Principal(
                key_id="rpm", key_prefix="tg-rpm", name="rpm", limits=Limits(rpm=RPM_LIMIT)
            )
            results = await asyncio.gather(
                *(store.reserve(p, f"r{i}", Demand(1, 0)) for i in range(100)),
                return_exceptions=True,
            )
            admitted = sum(1 for r in results if not isinstance(r, BaseException))
            refused = sum(1 for r in results if isinstance(r, RateLimitError))
        else:
            p = Principal(
                key_id="budget",
                key_prefix="tg-budget",
                name="budget",
                limits=Limits(budget_total_usd=BUDGET_NUSD / 1e9),
            )

            async def one(i: int) -> int:
                try:
                    res = await store.reserve(p, f"b{i}", Demand(1, WORST_NUSD))
                except RateLimitError:
                    return -1
                await asyncio.sleep(rng.random() * 0.002)
                actual = rng.randint(WORST_NUSD // 10, WORST_NUSD)
                await store.settle(res, Demand(1, actual))
                return actual

            wave = 0
            while True:
                out = await asyncio.gather(*(one(wave * 20 + i) for i in range(20)))
                wave += 1
                admitted += sum(1 for x in out if x >= 0)
                refused += sum(1 for x in out if x < 0)
                spent += sum(x for x in out if x >= 0)
                if all(x < 0 for x in out):
                    break
    finally:
        await store.aclose()
    return {"admitted": admitted, "refused": refused, "spent": spent}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))))
