"""Ledger records for tests, with every field filled and a few knobs."""

from __future__ import annotations

import datetime as dt
import itertools
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
