"""Quotas on the request path: stream cut-off, and reservations released on every path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from engines.standin.process import StandinProcess
from gateway.auth import Principal, hash_key
from gateway.config import Settings
from gateway.db import make_engine
from gateway.keys import KeyCreate, KeyStore, LimitsIn
from gateway.ledger.record import LedgerRecord
from tests.fake_upstream import Handler, stream_frames
from tests.fake_upstream import serve_in_thread as serve_engine
from tests.support import CLIENT_KEY, EngineSpec, RunningGateway, gateway_config, serve_in_thread
from tests.support.standin import set_fault

MSGS = [{"role": "user", "content": "hi"}]
#: The misbehaving engine below streams this many tokens, whatever max_tokens says.
RUNAWAY_TOKENS = 200


class ListRecorder:
    """Keeps ledger records in memory."""

    def __init__(self) -> None:
        self.records: list[LedgerRecord] = []

    def record(self, rec: LedgerRecord) -> None:
        self.records.append(rec)


def runaway_engine(model: str) -> Handler:
    """An engine that ignores max_tokens: RUNAWAY_TOKENS chunks, then usage, then [DONE]."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/v1/chat/completions":
            return web.json_response({"status": "ok"})
        frames = []
        for _ in range(RUNAWAY_TOKENS):
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": " x"}, "finish_reason": None}],
            }
            frames.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        usage = {"prompt_tokens": 0, "completion_tokens": RUNAWAY_TOKENS}
        frames.append(b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n")
        frames.append(b"data: [DONE]\n\n")
        return await stream_frames(request, frames)

    return handler


def key_store(settings: Settings) -> KeyStore:
    store = KeyStore(make_engine(settings.ledger.url))
    store.create_tables()
    return store


def sse_payloads(resp: httpx.Response) -> list[bytes]:
    return [
        line[len("data: ") :].encode() for line in resp.iter_lines() if line.startswith("data: ")
    ]


def open_chat_stream(gw: RunningGateway, key: str, **body: Any) -> Any:
    """A chat request whose response is read as it comes (a context manager)."""
    return httpx.stream(
        "POST",
        gw.v1 + "/chat/completions",
        json={"model": "small", "messages": MSGS, **body},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def cut_stream(cfg: dict[str, Any]) -> tuple[list[bytes], ListRecorder, Any]:
    settings = Settings(**cfg)
    created = key_store(settings).create_key(
        KeyCreate(name="b", limits=LimitsIn.model_validate({"budget_daily_usd": "0.04"}))
    )
    recorder = ListRecorder()
    with serve_in_thread(settings, monitor=False, recorder=recorder) as gw:
        with open_chat_stream(gw, created.key, max_tokens=5, stream=True) as resp:
            assert resp.status_code == 200
            payloads = sse_payloads(resp)
        pipeline = gw.services.pipeline
        deadline = time.monotonic() + 5
        while not recorder.records and time.monotonic() < deadline:
            time.sleep(0.01)
    return payloads, recorder, pipeline


def test_stream_is_cut_when_the_budget_runs_out(tmp_path: Path) -> None:
    # 1e-3 USD per completion token, prompts free: the key may spend 40 tokens' worth.
    with serve_engine(runaway_engine("runaway")) as engine_url:
        cfg = gateway_config(
            tmp_path,
            [EngineSpec("small-0", engine_url, "small", "runaway")],
            prices={"runaway": (0.0, 1000.0)},
        )
        payloads, recorder, pipeline = cut_stream(cfg)
    content = [p for p in payloads[:-2] if b'"delta"' in p]
    # Reserved 5 tokens of 40, 35 left: the 41st chunk would pass the budget, so the
    # stream ends before it is sent.
    assert len(content) == 40
    error = orjson.loads(payloads[-2])["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota"
    assert "Budget exhausted during this stream" in error["message"]
    assert payloads[-1] == b"[DONE]"
    (rec,) = recorder.records
    # Billed for what the engine generated: at most the one chunk past the budget.
    assert rec.status == "budget_cutoff" and rec.completion_tokens == 41
    assert rec.cost_nusd == rec.completion_tokens * 1_000_000 <= 40_000_000 + 1_000_000
    assert pipeline.quotas.status()["scopes"] == 1  # type: ignore[attr-defined]


def test_streams_are_not_cut_when_disabled(tmp_path: Path) -> None:
    with serve_engine(runaway_engine("runaway")) as engine_url:
        cfg = gateway_config(
            tmp_path,
            [EngineSpec("small-0", engine_url, "small", "runaway")],
            prices={"runaway": (0.0, 1000.0)},
            quotas={"cut_stream_on_budget": False},
        )
        settings = Settings(**cfg)
        created = key_store(settings).create_key(
            KeyCreate(name="b", limits=LimitsIn.model_validate({"budget_daily_usd": "0.04"}))
        )
        with serve_in_thread(settings, monitor=False) as gw:
            resp = httpx.post(
                gw.v1 + "/chat/completions",
                json={"model": "small", "messages": MSGS, "max_tokens": 5, "stream": True},
                headers={"authorization": f"Bearer {created.key}"},
                timeout=10,
            )
    payloads = sse_payloads(resp)
    assert sum(1 for p in payloads if b'"delta"' in p) == RUNAWAY_TOKENS
    assert payloads[-1] == b"[DONE]" and not any(b'"error"' in p for p in payloads)


@pytest.fixture(scope="module")
def standin_gateway(
    standin_pair: dict[str, StandinProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningGateway, KeyStore]]:
    tmp = tmp_path_factory.mktemp("release")
    cfg = gateway_config(
        tmp, [EngineSpec("small-0", standin_pair["small"].base_url, "small", "standin-small")]
    )
    settings = Settings(**cfg)
    store = key_store(settings)
    with serve_in_thread(settings) as gw:
        yield gw, store


def one_slot_key(store: KeyStore) -> tuple[str, Principal]:
    created = store.create_key(
        KeyCreate(
            name="one",
            limits=LimitsIn.model_validate({"concurrency": 1, "budget_daily_usd": "10"}),
        )
    )
    found = store.lookup(hash_key(created.key))
    assert found is not None
    return created.key, found.principal


def chat(gw: RunningGateway, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": "small", "messages": MSGS, "max_tokens": 3, **body},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def wait_admitted(gw: RunningGateway, key: str, timeout: float = 5.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        resp = chat(gw, key)
        if resp.status_code != 429 or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


def test_reservation_released_after_client_disconnect(
    standin_gateway: tuple[RunningGateway, KeyStore], standin_pair: dict[str, StandinProcess]
) -> None:
    gw, store = standin_gateway
    key, principal = one_slot_key(store)
    set_fault(standin_pair["small"], mode="stall_after", tokens=2)
    try:
        with open_chat_stream(gw, key, max_tokens=50, stream=True) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()  # kept: dropping the iterator closes the response
            assert next(lines).startswith("data: ")
            held = chat(gw, key)
            assert held.status_code == 429  # the stream holds the only slot
            assert held.json()["error"]["message"].startswith(
                "Rate limit reached for concurrent requests"
            )
        # Leaving the block hung up mid-stream.
    finally:
        set_fault(standin_pair["small"], mode="none")
    assert wait_admitted(gw, key).status_code == 200
    quotas = gw.services.quotas
    remaining = quotas._counters[f"k:{principal.key_id}"]  # local store internals
    assert remaining.held == 0 and not remaining.holds


def test_reservation_released_after_engine_error(
    standin_gateway: tuple[RunningGateway, KeyStore], standin_pair: dict[str, StandinProcess]
) -> None:
    gw, store = standin_gateway
    key, principal = one_slot_key(store)
    set_fault(standin_pair["small"], mode="error_5xx", status=500, count=5)
    try:
        failed = chat(gw, key)
        assert failed.status_code in (502, 503)
        failed_stream = chat(gw, key, stream=True)
        assert failed_stream.status_code in (502, 503)
    finally:
        set_fault(standin_pair["small"], mode="none")
    ok = wait_admitted(gw, key)
    assert ok.status_code == 200
    counters = gw.services.quotas._counters[f"k:{principal.key_id}"]
    assert counters.held == 0 and not counters.holds
    # Only the successful request was billed; the failures cost nothing.
    assert ok.json()["usage"]["completion_tokens"] == 3


def test_a_static_key_carries_the_limits_written_in_config(
    standin_pair: dict[str, StandinProcess], tmp_path: Path
) -> None:
    cfg = gateway_config(
        tmp_path, [EngineSpec("small-0", standin_pair["small"].base_url, "small", "standin-small")]
    )
    cfg["auth"]["static_keys"][0]["limits"] = {"rpm": 2, "budget_daily_usd": 5}
    with serve_in_thread(Settings(**cfg), monitor=False) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0)
        for _ in range(2):
            client.chat.completions.create(model="small", messages=MSGS, max_tokens=2)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="small", messages=MSGS, max_tokens=2)  # type: ignore[arg-type]
        metrics = httpx.get(gw.base_url + "/metrics", timeout=5).text
    assert 'tollgate_quota_refusals_total{limit="rpm"} 1.0' in metrics
    assert caught.value.code == "rate_limit_exceeded"
    assert "requests per minute" in caught.value.message
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "2"


class SlowSettle:
    """Wraps the gateway's quota store: each settlement takes ``delay`` seconds to land."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.landed = 0

    async def settle(self, reservation: Any, actual: Any) -> None:
        await asyncio.sleep(self.delay)
        await self.inner.settle(reservation, actual)
        self.landed += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_the_client_hears_the_end_only_after_the_settlement(
    standin_gateway: tuple[RunningGateway, KeyStore], stream: bool
) -> None:
    """The next request, on any replica, must find the slot free and the spend counted:
    so the answer (or a stream's [DONE]) leaves only once the request is settled."""
    gw, store = standin_gateway
    key, _ = one_slot_key(store)
    pipeline = gw.services.pipeline
    slow = SlowSettle(pipeline.quotas, delay=0.3)
    pipeline.quotas = slow
    try:
        with open_chat_stream(gw, key, max_tokens=3, stream=stream) as resp:
            assert resp.status_code == 200
            body = resp.read()
            landed_at_end = slow.landed
    finally:
        pipeline.quotas = slow.inner
    assert body.endswith(b"data: [DONE]\n\n") if stream else orjson.loads(body)["usage"]
    assert landed_at_end == 1
    assert chat(gw, key).status_code == 200  # the one slot is free again
