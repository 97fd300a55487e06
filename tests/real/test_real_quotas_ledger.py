"""Quotas in Redis and the ledger, against real vLLM engines: what real SmolLM2 reports
as usage is what the ledger bills and what the key's counters hold."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from gateway.config import Settings
from gateway.ledger.store import LedgerStore
from gateway.protocol import Endpoint, parse_request
from tests.quotas.redis_server import RedisServer
from tests.real.conftest import REAL_TIMEOUTS, real_specs
from tests.support import CLIENT_KEY, RunningGateway, gateway_config, serve_in_thread

pytestmark = [pytest.mark.real_engine, pytest.mark.redis]

#: A key whose daily budget holds one 20-token answer from the small tier, not two:
#: the reservation (~6.1 µUSD) fits, the second after the first's ~5.8 µUSD does not.
BUDGET_KEY = "tg-real-budget-key-0000000001"
PRICES = {"smollm2-135m-awq": (0.05, 0.2), "smollm2-135m": (0.5, 1.5)}  # USD per Mtok
COUNT = [{"role": "user", "content": "Count from one to fifty, separated by commas."}]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-real")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(
    real_engines: dict[str, str], redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp: Path = tmp_path_factory.mktemp("real-money")
    cfg = gateway_config(
        tmp,
        real_specs(real_engines),
        prices=PRICES,
        timeouts=REAL_TIMEOUTS,
        quotas={"backend": "redis", "redis_url": redis.url},
        ledger={"flush_interval_s": 0.1, "partial_restore_ok": True},  # one gateway process
        # No fallback to large: a reservation is priced at the small tier alone.
        routing={"fallback": False},
    )
    cfg["auth"]["static_keys"][0]["limits"] = {"tpm": 1_000_000, "budget_daily_usd": 1.0}
    cfg["auth"]["static_keys"].append(
        {"key": BUDGET_KEY, "name": "budget", "limits": {"budget_daily_usd": 8e-6}}
    )
    with serve_in_thread(Settings(**cfg)) as gw:
        yield gw


def ledger_rows(gw: RunningGateway, n: int) -> dict[str, tuple[int, int, int]]:
    """request id -> (prompt tokens, completion tokens, cost nano-USD), once n are in."""
    store = LedgerStore.from_url(gw.settings.ledger.url)
    try:
        deadline = time.monotonic() + 15
        while True:
            rows = store.all_records()
            if len(rows) >= n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        store.dispose()
    return {r.request_id: (r.prompt_tokens, r.completion_tokens, r.cost_nusd) for r in rows}


def redis_sum(redis: RedisServer, pattern: str) -> int:
    client = redis.client()
    try:
        return sum(int(client.get(k) or 0) for k in client.scan_iter(match=pattern))
    finally:
        client.close()


def test_the_ledger_and_the_counters_hold_the_real_usage(
    gateway: RunningGateway, redis: RedisServer
) -> None:
    client = openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0, timeout=120)
    usage: dict[str, tuple[int, int, str]] = {}
    for model in ("small", "large"):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=COUNT, max_tokens=12, temperature=0
        )
        resp = raw.parse()
        assert resp.usage is not None
        served = "smollm2-135m-awq" if model == "small" else "smollm2-135m"
        rid = raw.headers["x-request-id"]
        usage[rid] = (resp.usage.prompt_tokens, resp.usage.completion_tokens, served)
    stream = client.chat.completions.with_raw_response.create(
        model="small",
        messages=COUNT,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream.parse())
    last = chunks[-1].usage
    assert last is not None
    usage[stream.headers["x-request-id"]] = (
        last.prompt_tokens,
        last.completion_tokens,
        "smollm2-135m-awq",
    )

    rows = ledger_rows(gateway, len(usage))
    assert set(rows) == set(usage)
    total_cost = 0
    for rid, (prompt, completion, served) in usage.items():
        p_price, c_price = PRICES[served]
        cost = round(prompt * p_price * 1000 + completion * c_price * 1000)  # nano-USD
        assert rows[rid] == (prompt, completion, cost)
        total_cost += cost
    # Reservations were settled to the real usage: tokens this minute and spend today.
    deadline = time.monotonic() + 5
    tokens = sum(p + c for p, c, _ in usage.values())
    while redis_sum(redis, "tg:q:{k:static-0}:tpm:*") != tokens and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_sum(redis, "tg:q:{k:static-0}:tpm:*") == tokens
    assert redis_sum(redis, "tg:q:{k:static-0}:sd:*") == total_cost
    assert redis_sum(redis, "tg:q:{t:qa}:sd:*") == total_cost  # the key's team too


def test_a_budget_stops_the_key_after_real_spend(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gateway.v1, api_key=BUDGET_KEY, max_retries=0, timeout=120)
    first = client.chat.completions.create(
        model="small", messages=COUNT, max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    )
    assert first.usage is not None and first.usage.completion_tokens == 20
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="small", messages=COUNT, max_tokens=20)
    assert caught.value.code == "insufficient_quota"
    assert "Budget exhausted for daily spend" in caught.value.message


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Name a colour."},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Tell me a short fact about the moon, please."},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_admission_never_counts_fewer_prompt_tokens_than_the_engine(
    gateway: RunningGateway, messages: list[dict[str, str]]
) -> None:
    """The reservation's prompt count is a worst case of what vLLM bills, chat template
    included (SmolLM2's adds a default system prompt unless there is one), and close."""
    client = openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0, timeout=120)
    resp = client.chat.completions.create(model="small", messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert resp.usage is not None
    body = orjson.dumps({"model": "small", "messages": messages})
    request = parse_request(Endpoint.CHAT, body, max_messages=100, max_n=4)
    estimate = gateway.services.tokens.count_prompt("smollm2-135m-awq", request)
    billed = resp.usage.prompt_tokens
    assert billed <= estimate, (estimate, billed)
    # Close too, whether the template adds its default system prompt or the client
    # brought one (both overheads are measured from SmolLM2's template at start-up).
    assert estimate <= billed + 3 + 2 * len(messages), (estimate, billed)
