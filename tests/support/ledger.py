"""Ledger records for tests and benchmarks, with every field filled and a few knobs."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from typing import Any

from gateway.ledger.record import LedgerRecord

T0 = dt.datetime(2026, 3, 14, 9, 30, tzinfo=dt.UTC)


def make_record(n: int = 0, **fields: Any) -> LedgerRecord:
    finished = fields.pop("finished_at", T0 + dt.timedelta(seconds=n))
    values: dict[str, Any] = {
        "request_id": f"req-{n:08d}",
        "started_at": finished - dt.timedelta(milliseconds=250),
        "finished_at": finished,
        "key_id": "key-a",
        "key_prefix": "tg-aaaaaaa",
        "team": "research",
        "endpoint": "chat",
        "requested_model": "auto",
        "engine": "small-0",
        "tier": "small",
        "upstream_model": "standin-small",
        "route_reason": "short_prompt",
        "stream": False,
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cached_tokens": 0,
        "usage_estimated": False,
        "latency_ms": 250.5,
        "ttft_ms": 30.25,
        "status": "ok",
        "http_status": 200,
        "error_code": None,
        "cost_nusd": 9_000,
        "counterfactual_nusd": 80_000,
        "price_version": "standin-small@2026-01-01",
    }
    values.update(fields)
    return LedgerRecord(**values)


def records(count: int, start: int = 0, **fields: Any) -> list[LedgerRecord]:
    return [make_record(n, **fields) for n in itertools.islice(itertools.count(start), count)]


TEAMS = {"key-ana": "research", "key-bo": "research", "key-cy": "sales", "key-di": None}
PRICES = {"small": (50, 200), "large": (500, 1500)}  # nano-USD per token


def demo_records(now: dt.datetime, days: int = 24, seed: int = 3) -> list[LedgerRecord]:
    """A few weeks of plausible traffic: small-tier routing saves most of the spend."""
    rng = random.Random(seed)
    out: list[LedgerRecord] = []
    n = 0
    for day in range(days):
        base = now - dt.timedelta(days=days - 1 - day)
        for _ in range(rng.randint(30, 90) + day * 3):
            key = rng.choice(["key-ana"] * 4 + ["key-bo"] * 2 + ["key-cy"] * 3 + ["key-di"])
            model = rng.choice(["auto", "auto", "auto", "small", "large"])
            tier = (
                "large"
                if model == "large" or (model == "auto" and rng.random() < 0.25)
                else "small"
            )
            prompt, completion = rng.randint(100, 3000), rng.randint(20, 900)
            p, c = PRICES[tier]
            out.append(
                make_record(
                    n,
                    request_id=f"demo-{n:06d}",
                    finished_at=base.replace(hour=rng.randint(0, 23), minute=rng.randint(0, 59)),
                    key_id=key,
                    key_prefix="tg-" + key[4:].ljust(7, "x"),
                    team=TEAMS[key],
                    requested_model=model,
                    route_reason="by_name" if model != "auto" else "short_prompt",
                    tier=tier,
                    engine=f"{tier}-0",
                    upstream_model=f"smollm2-{tier}",
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    cost_nusd=prompt * p + completion * c,
                    # Routing saved only on what it chose (``auto``).
                    counterfactual_nusd=(
                        prompt * 500 + completion * 1500
                        if model == "auto"
                        else prompt * p + completion * c
                    ),
                    price_version=f"smollm2-{tier}@2026-01-01",
                )
            )
            n += 1
    return out


class ListRecorder:
    """A ledger recorder that keeps records in memory (for assertions)."""

    def __init__(self) -> None:
        self.records: list[LedgerRecord] = []

    def record(self, rec: LedgerRecord) -> None:
        self.records.append(rec)
