"""The request pipeline on the mock transport: every stage, no sockets.

Each test builds the real services (router, quotas, meter, ledger recorder) around a
:class:`MockTransport` whose handler plays the engines, then calls
:meth:`Pipeline.handle` as a route does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.responses import Response

from gateway.app import build_services
from gateway.config import Settings
from gateway.errors import GatewayError, InvalidRequestError, UpstreamError
from gateway.ledger.record import LedgerRecord
from gateway.protocol import Endpoint
from gateway.request.streaming import SSEResponse
from gateway.services import Services
from gateway.upstream.mock import MockReply, MockRequest, MockTransport
from tests.support import CLIENT_KEY, EngineSpec, gateway_config

AUTH = f"Bearer {CLIENT_KEY}"
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
# Prices from gateway_config: small 0.05 / 0.2 USD per million tokens, large 0.5 / 1.5.
SMALL_COST = 12 * 50 + 3 * 200
LARGE_COST = 12 * 500 + 3 * 1500


class Recorder:
    def __init__(self) -> None:
        self.records: list[LedgerRecord] = []

    def record(self, rec: LedgerRecord) -> None:
        self.records.append(rec)


def answer(text: str = "hi there", usage: dict[str, int] | None = USAGE) -> MockReply:
    body: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }
    if usage is not None:
        body["usage"] = usage
    return MockReply.json(body)


def chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def chat(stream: bool = False, model: str = "small", **extra: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


ENGINES = [
    EngineSpec("small-a", "http://small-a", "small", "model-small"),
    EngineSpec("small-b", "http://small-b", "small", "model-small"),
    EngineSpec("large-0", "http://large-0", "large", "model-large"),
]


@asynccontextmanager
async def pipeline_with(
    tmp_path: Path, handler: Callable[[MockRequest], MockReply], **sections: Any
) -> AsyncIterator[tuple[Services, MockTransport, Recorder]]:
    cfg = gateway_config(tmp_path, ENGINES, ledger={"enabled": False}, **sections)
    settings = Settings.model_validate(cfg)
    transport = MockTransport(handler, timeouts=settings.timeouts)
    recorder = Recorder()
    async with build_services(
        settings, transport=transport, recorder=recorder, monitor=False
    ) as svc:
        yield svc, transport, recorder


async def handle(svc: Services, body: bytes, endpoint: Endpoint = Endpoint.CHAT) -> Response:
    ctx = svc.pipeline.new_context("req-1", endpoint)
    return await svc.pipeline.handle(ctx, AUTH, body)


async def drive(response: Response) -> tuple[int, dict[bytes, bytes], bytes]:
    """Run an ASGI response against a client that stays connected."""
    sent: list[dict[str, Any]] = []
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


def events(body: bytes) -> list[bytes]:
    return [b[6:] for b in body.split(b"\n\n") if b.startswith(b"data: ")]


async def test_unary_answer_is_relayed_metered_and_recorded(tmp_path: Path) -> None:
    async with pipeline_with(tmp_path, lambda r: answer()) as (svc, mock, rec):
        resp = await handle(svc, chat())
        assert svc.pipeline.active == 0
    assert resp.status_code == 200
    assert orjson.loads(bytes(resp.body))["choices"][0]["message"]["content"] == "hi there"
    (sent,) = mock.requests
    assert sent.json["model"] == "model-small" and sent.request_id == "req-1"
    assert resp.headers["x-tollgate-tier"] == "small"
    assert resp.headers["x-tollgate-engine"] == sent.engine.name
    assert resp.headers["x-tollgate-route-reason"] == "by_name"
    (r,) = rec.records
    assert (r.prompt_tokens, r.completion_tokens, r.usage_estimated) == (12, 3, False)
    # The client named the tier: routing saved nothing, so the counterfactual is the cost.
    assert r.cost_nusd == SMALL_COST and r.counterfactual_nusd == SMALL_COST
    assert (r.status, r.http_status, r.engine) == ("ok", 200, sent.engine.name)


async def test_routing_savings_count_only_where_a_policy_chose_the_tier(tmp_path: Path) -> None:
    async with pipeline_with(tmp_path, lambda r: answer()) as (svc, _mock, rec):
        resp = await handle(svc, chat(model="auto"))
    assert resp.status_code == 200 and resp.headers["x-tollgate-tier"] == "small"
    (r,) = rec.records
    assert r.requested_model == "auto" and r.route_reason != "by_name"
    # Chosen by the policy: compared with the reference (large) tier.
    assert r.cost_nusd == SMALL_COST and r.counterfactual_nusd == LARGE_COST


async def test_a_failed_replica_is_retried_on_the_next_one(tmp_path: Path) -> None:
    def handler(r: MockRequest) -> MockReply:
        return MockReply(status=503) if len(mock_requests) == 0 else answer()

    mock_requests: list[MockRequest] = []

    def counting(r: MockRequest) -> MockReply:
        reply = handler(r)
        mock_requests.append(r)
        return reply

    async with pipeline_with(tmp_path, counting) as (svc, _mock, rec):
        resp = await handle(svc, chat())
        upstream_errors = svc.metrics.upstream_errors.labels(
            mock_requests[0].engine.name, "engine_unavailable"
        )._value.get()
    first, second = mock_requests
    assert first.engine.name != second.engine.name and second.engine.tier == "small"
    assert resp.status_code == 200 and resp.headers["x-tollgate-engine"] == second.engine.name
    assert upstream_errors == 1
    (r,) = rec.records
    assert r.engine == second.engine.name and r.status == "ok"


async def test_fallback_to_the_other_tier_is_named_in_the_reason(tmp_path: Path) -> None:
    def handler(r: MockRequest) -> MockReply:
        return MockReply(status=503) if r.engine.tier == "small" else answer()

    async with pipeline_with(
        tmp_path, handler, routing={"retries": {"attempts": 3, "budget_ratio": 1.0}}
    ) as (svc, mock, rec):
        resp = await handle(svc, chat())
    assert [r.engine.tier for r in mock.requests] == ["small", "small", "large"]
    assert resp.headers["x-tollgate-tier"] == "large"
    assert resp.headers["x-tollgate-route-reason"] == "by_name;fallback_from:small"
    (r,) = rec.records
    assert r.route_reason == "by_name;fallback_from:small" and r.cost_nusd == LARGE_COST
    # A fallback is routing's choice: counted against the reference (here: no saving).
    assert r.counterfactual_nusd == LARGE_COST


async def test_an_engine_refusal_is_not_retried_and_is_recorded(tmp_path: Path) -> None:
    def handler(r: MockRequest) -> MockReply:
        return MockReply.json({"error": {"message": "bad max_tokens at 10.1.2.3:8000"}}, 400)

    async with pipeline_with(tmp_path, handler) as (svc, mock, rec):
        with pytest.raises(InvalidRequestError) as exc:
            await handle(svc, chat())
        assert svc.pipeline.active == 0
    assert "bad max_tokens" in exc.value.message and "10.1.2.3" not in exc.value.message
    assert len(mock.requests) == 1
    (r,) = rec.records
    assert (r.status, r.http_status, r.cost_nusd, r.prompt_tokens) == ("error", 400, 0, 0)


async def test_missing_usage_is_estimated(tmp_path: Path) -> None:
    async with pipeline_with(tmp_path, lambda r: answer("one two three", usage=None)) as (
        svc,
        _mock,
        rec,
    ):
        await handle(svc, chat())
    (r,) = rec.records
    assert r.usage_estimated and r.prompt_tokens > 0 and r.completion_tokens >= 1
    assert r.cost_nusd > 0


async def test_invalid_input_is_refused_before_any_engine_work(tmp_path: Path) -> None:
    async with pipeline_with(tmp_path, lambda r: answer()) as (svc, mock, rec):
        with pytest.raises(InvalidRequestError) as exc:
            await handle(svc, chat(n="2"))
        refused = svc.metrics.requests.labels("unknown", "none", "400")._value.get()
        assert svc.pipeline.active == 0
    assert exc.value.param == "n" and refused == 1
    assert mock.requests == [] and rec.records == []


async def test_stream_is_relayed_with_usage_and_settles(tmp_path: Path) -> None:
    payloads = [chunk("a"), chunk("b"), {"choices": [], "usage": USAGE}]
    async with pipeline_with(tmp_path, lambda r: MockReply.sse(payloads)) as (svc, mock, rec):
        resp = await handle(svc, chat(stream=True))
        assert isinstance(resp, SSEResponse)
        status, headers, body = await drive(resp)
        assert svc.pipeline.active == 0
    (sent,) = mock.requests
    assert sent.json["stream_options"] == {"include_usage": True}
    got = events(body)
    assert got[-1] == b"[DONE]" and len(got) == 3  # the usage chunk was not asked for
    assert status == 200 and headers[b"x-tollgate-engine"] == sent.engine.name.encode()
    assert headers[b"content-type"].startswith(b"text/event-stream")
    (r,) = rec.records
    assert r.stream and (r.prompt_tokens, r.completion_tokens) == (12, 3)
    assert r.cost_nusd == SMALL_COST and r.ttft_ms is not None and mock.aborted == []


async def test_stream_that_fails_before_its_first_chunk_moves_on(tmp_path: Path) -> None:
    def handler(r: MockRequest) -> MockReply:
        if r.engine.name == "small-a":
            return MockReply(chunks=(), error_after=ConnectionResetError())
        return MockReply.sse([chunk("ok"), {"choices": [], "usage": USAGE}])

    async with pipeline_with(tmp_path, handler) as (svc, _mock, rec):
        for _ in range(2):  # whichever replica the balancer tries first
            _, headers, body = await drive(await handle(svc, chat(stream=True)))
            assert headers[b"x-tollgate-engine"] == b"small-b"
            assert events(body)[-1] == b"[DONE]"
    assert all(r.engine == "small-b" and r.status == "ok" for r in rec.records)


async def test_stream_broken_midway_ends_with_an_error_frame(tmp_path: Path) -> None:
    def handler(r: MockRequest) -> MockReply:
        return MockReply.sse(
            [chunk("a"), chunk("b")], done=False, error_after=ConnectionResetError()
        )

    async with pipeline_with(tmp_path, handler) as (svc, mock, rec):
        status, _, body = await drive(await handle(svc, chat(stream=True)))
    got = events(body)
    assert status == 200 and got[-1] == b"[DONE]"
    err = orjson.loads(got[-2])["error"]
    assert "closed the connection unexpectedly" in err["message"]
    assert len(mock.requests) == 1  # output had reached the client: no retry
    (r,) = rec.records
    assert (r.status, r.http_status) == ("error", 502)
    assert r.usage_estimated and r.completion_tokens >= 2


async def test_exhausted_candidates_give_503_with_retry_after(tmp_path: Path) -> None:
    async with pipeline_with(tmp_path, lambda r: MockReply(status=503)) as (svc, mock, rec):
        with pytest.raises(GatewayError) as exc:
            await handle(svc, chat())
    assert exc.value.status_code == 503 and exc.value.headers["Retry-After"] == "1"
    assert len(mock.requests) == 2 and len(rec.records) == 1 and rec.records[0].http_status == 503


async def test_transport_errors_come_from_one_table(tmp_path: Path) -> None:
    def handler(r: MockRequest) -> MockReply:
        raise ConnectionRefusedError

    async with pipeline_with(
        tmp_path, handler, routing={"fallback": False, "retries": {"attempts": 1}}
    ) as (svc, mock, rec):
        with pytest.raises(GatewayError) as exc:
            await handle(svc, chat())
    assert exc.value.status_code == 503 and "refused the connection" in exc.value.message
    assert not isinstance(exc.value, UpstreamError)
    assert len(mock.requests) == 1 and rec.records[0].error_code == exc.value.code


async def test_a_client_that_leaves_mid_stream_aborts_the_engine_and_is_billed(
    tmp_path: Path,
) -> None:
    def handler(r: MockRequest) -> MockReply:
        return MockReply.sse([chunk(f"t{i} ") for i in range(50)], delay_s=0.01)

    async with pipeline_with(tmp_path, handler) as (svc, mock, rec):
        resp = await handle(svc, chat(stream=True))
        bodies: list[bytes] = []
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message.get("body"):
                bodies.append(message["body"])
                if len(bodies) == 3:
                    gone.set()

        await resp({"type": "http"}, receive, send)  # type: ignore[arg-type]
        assert svc.pipeline.active == 0
    assert len(bodies) < 10 and mock.aborted == mock.requests
    (r,) = rec.records
    assert (r.status, r.http_status) == ("client_disconnect", 499)
    assert r.usage_estimated and r.completion_tokens >= 3 and r.cost_nusd > 0


async def test_a_unary_hang_up_is_billed_for_the_prompt(tmp_path: Path) -> None:
    reached = asyncio.Event()

    def engine(r: MockRequest) -> MockReply:
        reached.set()
        return MockReply(body=b"{}", delay_s=5)

    async with pipeline_with(tmp_path, engine) as (svc, _mock, rec):
        task = asyncio.ensure_future(handle(svc, chat()))
        await asyncio.wait_for(reached.wait(), 5)
        task.cancel()  # what the route does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        assert svc.pipeline.active == 0
    (r,) = rec.records
    assert (r.status, r.http_status, r.error_code) == ("client_disconnect", 499, None)
    assert r.usage_estimated and r.prompt_tokens > 0 and r.completion_tokens == 0
    assert r.cost_nusd == r.prompt_tokens * 50 > 0  # the small tier's prompt price


async def test_a_unary_time_out_is_billed_for_the_prompt(tmp_path: Path) -> None:
    async with pipeline_with(
        tmp_path,
        lambda r: MockReply(body=b"{}", delay_s=5),
        timeouts={"total_s": 0.2},
        routing={"fallback": False, "retries": {"attempts": 1}},
    ) as (svc, mock, rec):
        with pytest.raises(GatewayError) as exc:
            await handle(svc, chat())
    assert exc.value.status_code == 504 and len(mock.requests) == 1
    (r,) = rec.records
    assert (r.status, r.http_status) == ("timeout", 504)
    assert r.usage_estimated and r.prompt_tokens > 0 and r.cost_nusd > 0
