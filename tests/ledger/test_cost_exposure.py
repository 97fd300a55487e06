"""Opt-in cost for clients: the ``x-request-cost-usd`` header and ``usage.cost_usd``."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from engines.standin.process import StandinProcess
from gateway.config import Settings
from gateway.ledger.store import LedgerStore
from tests.support import CLIENT_KEY, EngineSpec, gateway_config, serve_in_thread

MSGS = [{"role": "user", "content": "what does a tollgate do"}]
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


def _settings(pair: dict[str, StandinProcess], tmp: Path, on: bool) -> Settings:
    specs = [EngineSpec("small-0", pair["small"].base_url, "small", "standin-small")]
    cfg = gateway_config(
        tmp,
        specs,
        pricing={"cost_header": on, "cost_in_usage": on},
        ledger={"flush_interval_s": 0.05},
    )
    return Settings(**cfg)


@pytest.mark.parametrize("on", [True, False])
def test_cost_is_shown_only_when_enabled_and_equals_the_ledger(
    standin_pair: dict[str, StandinProcess], tmp_path: Path, on: bool
) -> None:
    settings = _settings(standin_pair, tmp_path, on)
    with serve_in_thread(settings) as gw:
        body = {"model": "small", "messages": MSGS, "max_tokens": 7}
        r = httpx.post(gw.v1 + "/chat/completions", json=body, headers=AUTH, timeout=10)
        assert r.status_code == 200
        streamed = httpx.post(
            gw.v1 + "/chat/completions", json={**body, "stream": True}, headers=AUTH, timeout=10
        )
        assert "x-request-cost-usd" not in streamed.headers  # unknown when headers go out
        rid = r.headers["x-request-id"]
        store = LedgerStore.from_url(settings.ledger.url)
        deadline = time.monotonic() + 10
        while (rec := store.get(rid)) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        store.dispose()
    usage = r.json()["usage"]
    if on:
        assert r.headers["x-request-cost-usd"] == f"{rec.cost_nusd / 1e9:.9f}"
        assert usage["cost_usd"] == pytest.approx(rec.cost_nusd / 1e9, abs=1e-15)
        # 0.05 and 0.20 USD per 1M tokens: nano-USD = 50 x prompt + 200 x completion
        assert rec.cost_nusd == 50 * usage["prompt_tokens"] + 200 * 7 > 0
    else:
        assert "x-request-cost-usd" not in r.headers
        assert "cost_usd" not in usage
        assert rec.cost_nusd > 0  # billed all the same
