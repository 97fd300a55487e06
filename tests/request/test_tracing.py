"""Traces of real requests: a gateway served in a thread, stand-in engines, the SDK's
in-memory exporter in place of OTLP.

Each request must give one span per stage under the request's span, with the route's
attributes and the engine's token counts; the engine must receive the forward span's
``traceparent``; every path (answer, stream, engine error, stall, hang-up, refusal) must
end each span exactly once. With tracing off nothing is exported, a client's
``traceparent`` reaches the engine unchanged and none is made up.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from engines.standin.process import StandinProcess
from gateway.app import build_services
from gateway.config import Settings
from gateway.protocol import Endpoint
from gateway.request.tracing import incoming_traceparent
from gateway.upstream.mock import MockReply, MockRequest, MockTransport
from tests.support import CLIENT_KEY, EngineSpec, RunningGateway, gateway_config, serve_in_thread
from tests.support.standin import reset, set_fault, stats

STAGES = ["authenticate", "admit", "route", "forward", "settle", "record"]
MSGS: list[Any] = [{"role": "user", "content": "tell me about tides"}]
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"

Traced = tuple[RunningGateway, InMemorySpanExporter]


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, StandinProcess]]:
    procs = {
        "small": StandinProcess(model="standin-small", tpot_ms=1),
        "large": StandinProcess(model="standin-large", tpot_ms=1),
    }
    for p in procs.values():
        p.start()
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def _gateway(engines: dict[str, StandinProcess], tmp: Path, enabled: bool) -> Iterator[Traced]:
    specs = [
        EngineSpec("small-0", engines["small"].base_url, "small", "standin-small"),
        EngineSpec("large-0", engines["large"].base_url, "large", "standin-large"),
    ]
    cfg = gateway_config(
        tmp,
        specs,
        routing={"fallback": False},
        timeouts={"connect_s": 1, "ttft_s": 5, "idle_s": 1, "total_s": 10},
        tracing={"enabled": enabled, "service_name": "tollgate-test"},
    )
    exporter = InMemorySpanExporter()
    with serve_in_thread(Settings(**cfg), span_exporter=exporter) as gw:
        yield gw, exporter


@pytest.fixture(scope="module")
def traced_module(
    engines: dict[str, StandinProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traced]:
    yield from _gateway(engines, tmp_path_factory.mktemp("traced"), enabled=True)


@pytest.fixture
def traced(traced_module: Traced, engines: dict[str, StandinProcess]) -> Traced:
    for p in engines.values():
        reset(p)
    traced_module[1].clear()
    return traced_module


def client(gw: RunningGateway, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0, timeout=30)


def finished(traced: Traced, roots: int = 1) -> list[ReadableSpan]:
    """The exported spans, once ``roots`` requests have ended theirs (streams end later)."""
    gw, exporter = traced
    deadline = time.monotonic() + 10
    while True:
        gw.services.tracing.flush()
        spans = list(exporter.get_finished_spans())
        if sum(s.kind == SpanKind.SERVER for s in spans) >= roots:
            return spans
        assert time.monotonic() < deadline, f"no request span yet: {[s.name for s in spans]}"
        time.sleep(0.02)


def tree(spans: list[ReadableSpan]) -> tuple[ReadableSpan, dict[str, ReadableSpan]]:
    """The one request span and its children by name; each stage exactly once."""
    (root,) = [s for s in spans if s.kind == SpanKind.SERVER]
    children = sorted((s for s in spans if s is not root), key=lambda s: s.start_time or 0)
    names = [s.name for s in children]
    assert len(names) == len(set(names)), names  # no stage span twice
    for s in children:
        assert s.parent is not None and s.parent.span_id == root.context.span_id
        assert s.context.trace_id == root.context.trace_id
    return root, {s.name: s for s in children}  # in the order they started


def in_order(stages: dict[str, ReadableSpan]) -> None:
    """Stages do not overlap: each ends before the next starts."""
    ordered = [stages[n] for n in STAGES if n in stages]
    for a, b in itertools.pairwise(ordered):
        assert a.end_time is not None and b.start_time is not None
        assert a.end_time <= b.start_time, (a.name, b.name)


def engine_traceparent(p: StandinProcess) -> str | None:
    headers: dict[str, str] = stats(p)["last_request"]["headers"]
    return headers.get("traceparent")


def no_double_end(caplog: pytest.LogCaptureFixture) -> None:
    assert "ended span" not in caplog.text  # the SDK's warning for a second end()


def test_a_unary_request_has_a_span_per_stage_under_the_clients_trace(
    traced: Traced, engines: dict[str, StandinProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    raw = client(traced[0]).chat.completions.with_raw_response.create(
        model="small", messages=MSGS, max_tokens=5,
        extra_headers={"traceparent": CLIENT_TRACEPARENT},
    )  # fmt: skip
    reply = raw.parse()
    root, stages = tree(finished(traced))
    assert list(stages) == STAGES
    in_order(stages)
    assert root.name == "POST /v1/chat/completions"
    assert root.resource.attributes["service.name"] == "tollgate-test"
    # The client's span is the parent; its trace is the request's.
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE
    assert root.parent is not None and f"{root.parent.span_id:016x}" == CLIENT_SPAN
    a = root.attributes or {}
    assert a["tollgate.request_id"] == raw.headers["x-request-id"]
    assert a["tollgate.tier"] == raw.headers["x-tollgate-tier"] == "small"
    assert a["tollgate.engine"] == raw.headers["x-tollgate-engine"] == "small-0"
    assert a["tollgate.route_reason"] == raw.headers["x-tollgate-route-reason"]
    assert reply.usage is not None
    assert a["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens == 5
    assert a["http.response.status_code"] == 200 and a["tollgate.outcome"] == "ok"
    assert a["tollgate.stream"] is False
    assert root.status.status_code == StatusCode.UNSET
    assert (stages["route"].attributes or {})["tollgate.tier"] == "small"
    fwd = stages["forward"]
    assert fwd.kind == SpanKind.CLIENT
    assert (fwd.attributes or {})["tollgate.engine"] == "small-0"
    settle = stages["settle"].attributes or {}
    assert settle["gen_ai.usage.output_tokens"] == 5
    assert settle["tollgate.usage_estimated"] is False
    assert settle["tollgate.cost_usd"] > 0
    assert (stages["record"].attributes or {})["tollgate.recorded"] is True
    # The engine's request carries the forward span as its parent, in the same trace.
    sent = engine_traceparent(engines["small"])
    assert sent == f"00-{CLIENT_TRACE}-{fwd.context.span_id:016x}-01"
    no_double_end(caplog)


def test_auto_routing_names_its_reason_and_a_new_trace_starts_without_a_client_one(
    traced: Traced, engines: dict[str, StandinProcess]
) -> None:
    raw = client(traced[0]).chat.completions.with_raw_response.create(
        model="auto", messages=MSGS, max_tokens=3
    )
    root, stages = tree(finished(traced))
    assert root.parent is None
    tier = raw.headers["x-tollgate-tier"]
    route = stages["route"].attributes or {}
    assert route["tollgate.tier"] == tier
    assert route["tollgate.route_reason"] == raw.headers["x-tollgate-route-reason"] != "by_name"
    assert route["tollgate.candidates"] >= 1
    assert (stages["admit"].attributes or {})["gen_ai.request.model"] == "auto"
    sent = engine_traceparent(engines[tier])
    assert sent is not None
    assert sent.split("-")[1:3] == [
        f"{root.context.trace_id:032x}",
        f"{stages['forward'].context.span_id:016x}",
    ]


def test_a_stream_ends_forward_before_settle_and_record(
    traced: Traced, engines: dict[str, StandinProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    chunks = list(
        client(traced[0]).chat.completions.create(
            model="large", messages=MSGS, max_tokens=7, stream=True,
            stream_options={"include_usage": True},
            extra_headers={"traceparent": CLIENT_TRACEPARENT},
        )
    )  # fmt: skip
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 7
    root, stages = tree(finished(traced))
    assert list(stages) == STAGES
    in_order(stages)
    a = root.attributes or {}
    assert a["tollgate.stream"] is True
    assert (a["tollgate.engine"], a["tollgate.tier"]) == ("large-0", "large")
    assert a["gen_ai.usage.output_tokens"] == 7
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    fwd = stages["forward"].attributes or {}
    assert fwd["tollgate.ttft_s"] > 0
    # The request's span ends last, after the record.
    assert root.end_time is not None and stages["record"].end_time is not None
    assert root.end_time >= stages["record"].end_time
    assert engine_traceparent(engines["large"]) == (
        f"00-{CLIENT_TRACE}-{stages['forward'].context.span_id:016x}-01"
    )
    no_double_end(caplog)


def test_an_engine_error_is_named_on_forward_and_the_request(
    traced: Traced, engines: dict[str, StandinProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    set_fault(engines["small"], mode="error_5xx", status=500)
    with pytest.raises(openai.APIStatusError) as info:
        client(traced[0]).chat.completions.create(model="small", messages=MSGS, max_tokens=3)
    status = info.value.status_code
    assert status >= 500
    root, stages = tree(finished(traced))
    assert list(stages) == STAGES  # settle and record run on the error path too
    fwd = stages["forward"]
    assert fwd.status.status_code == StatusCode.ERROR
    code = (fwd.attributes or {})["error.type"]
    assert code == info.value.code
    for name in ("authenticate", "admit", "route", "settle", "record"):
        assert "error.type" not in (stages[name].attributes or {}), name
    assert root.status.status_code == StatusCode.ERROR
    a = root.attributes or {}
    assert (a["error.type"], a["http.response.status_code"]) == (code, status)
    assert a["tollgate.outcome"] == "error"
    assert (stages["record"].attributes or {})["tollgate.recorded"] is True
    no_double_end(caplog)


def test_a_stream_that_stalls_midway_times_out_in_forward(
    traced: Traced, engines: dict[str, StandinProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    set_fault(engines["small"], mode="stall_after", tokens=2)
    with pytest.raises(openai.APIError):
        for _ in client(traced[0]).chat.completions.create(
            model="small", messages=MSGS, max_tokens=20, stream=True
        ):
            pass
    root, stages = tree(finished(traced))
    assert list(stages) == STAGES
    in_order(stages)
    fwd = stages["forward"]
    assert fwd.status.status_code == StatusCode.ERROR
    assert (fwd.attributes or {})["tollgate.outcome"] == "timeout"
    a = root.attributes or {}
    assert a["tollgate.outcome"] == "timeout"
    assert a["error.type"] == (fwd.attributes or {})["error.type"]
    assert a["gen_ai.usage.output_tokens"] >= 2  # what was streamed is billed (estimated)
    assert a["tollgate.usage_estimated"] is True
    no_double_end(caplog)


def test_a_client_hang_up_mid_stream_ends_every_span_once(
    traced: Traced, engines: dict[str, StandinProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    set_fault(engines["large"], mode="stall_after", tokens=2)
    with httpx.stream(
        "POST",
        traced[0].v1 + "/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "large", "messages": MSGS, "max_tokens": 50, "stream": True},
        timeout=10,
    ) as r:
        lines = r.iter_lines()
        assert any("tok1" in next(lines) for _ in range(3))
    root, stages = tree(finished(traced))
    assert list(stages) == STAGES
    in_order(stages)
    a = root.attributes or {}
    assert a["tollgate.outcome"] == "client_disconnect"
    assert a["http.response.status_code"] == 499
    assert (stages["forward"].attributes or {})["tollgate.outcome"] == "client_disconnect"
    assert root.status.status_code == StatusCode.UNSET  # the client left: no gateway error
    no_double_end(caplog)


def test_a_refused_request_has_only_the_stages_it_reached(
    traced: Traced, engines: dict[str, StandinProcess]
) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(traced[0], key="tg-wrong-key-000000000000").chat.completions.create(
            model="small", messages=MSGS
        )
    root, stages = tree(finished(traced))
    assert list(stages) == ["authenticate"]
    assert (stages["authenticate"].attributes or {})["error.type"] == "invalid_api_key"
    a = root.attributes or {}
    assert (a["http.response.status_code"], a["tollgate.outcome"]) == (401, "rejected")
    assert root.status.status_code == StatusCode.UNSET  # a 4xx is the client's error
    with pytest.raises(openai.BadRequestError):
        client(traced[0]).chat.completions.create(model="small", messages=[])
    spans = finished(traced, roots=2)
    second = [s for s in spans if s.context.trace_id != root.context.trace_id]
    root2, stages2 = tree(second)
    assert list(stages2) == ["authenticate", "admit"]
    assert (root2.attributes or {})["http.response.status_code"] == 400
    assert stats(engines["small"])["received"] == 0


@pytest.fixture(scope="module")
def untraced(
    engines: dict[str, StandinProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traced]:
    yield from _gateway(engines, tmp_path_factory.mktemp("untraced"), enabled=False)


def test_tracing_off_exports_nothing_and_passes_the_clients_traceparent_through(
    untraced: Traced, engines: dict[str, StandinProcess]
) -> None:
    gw, exporter = untraced
    small = reset(engines["small"])
    c = client(gw)
    c.chat.completions.create(model="small", messages=MSGS, max_tokens=2)
    assert engine_traceparent(small) is None  # none is made up
    c.chat.completions.create(
        model="small", messages=MSGS, max_tokens=2,
        extra_headers={"traceparent": CLIENT_TRACEPARENT},
    )  # fmt: skip
    assert engine_traceparent(small) == CLIENT_TRACEPARENT  # unchanged
    list(
        c.chat.completions.create(
            model="small", messages=MSGS, max_tokens=2, stream=True,
            extra_headers={"traceparent": CLIENT_TRACEPARENT.replace("-01", "-00")},
        )
    )  # fmt: skip
    assert engine_traceparent(small) == CLIENT_TRACEPARENT.replace("-01", "-00")
    for bad in ("not-a-traceparent", f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
                f"00-{'0' * 32}-{CLIENT_SPAN}-01", CLIENT_TRACEPARENT.upper()):  # fmt: skip
        c.chat.completions.create(
            model="small", messages=MSGS, max_tokens=2, extra_headers={"traceparent": bad}
        )
        assert engine_traceparent(small) is None, bad  # malformed: dropped
    assert stats(small)["received"] == 7
    assert gw.services.tracing.flush()
    assert exporter.get_finished_spans() == ()


async def test_a_trace_the_sampler_drops_exports_nothing_but_still_reaches_the_engine(
    tmp_path: Path,
) -> None:
    specs = [EngineSpec("small-0", "http://small-0", "small", "standin-small")]
    cfg = gateway_config(
        tmp_path, specs, ledger={"enabled": False}, tracing={"enabled": True, "sample_ratio": 0}
    )
    settings = Settings.model_validate(cfg)
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}

    def engine(r: MockRequest) -> MockReply:
        return MockReply.json({"choices": [{"index": 0, "message": {}}], "usage": usage})

    mock = MockTransport(engine, timeouts=settings.timeouts)
    exporter = InMemorySpanExporter()
    body = b'{"model": "small", "messages": [{"role": "user", "content": "hi"}]}'
    async with build_services(
        settings, transport=mock, monitor=False, span_exporter=exporter
    ) as svc:
        for i, header in enumerate((None, CLIENT_TRACEPARENT.encode())):
            ctx = svc.pipeline.new_context(f"r{i}", Endpoint.CHAT, header)
            reply = await svc.pipeline.handle(ctx, f"Bearer {CLIENT_KEY}", body)
            assert reply.status_code == 200
        assert svc.tracing.flush()
        dropped, kept = (r.traceparent for r in mock.requests)
        # Not sampled: no span exported, yet the engine gets a valid unsampled context.
        # (the SDK may set W3C's "random trace id" flag, 0x02; the sampled bit is 0x01)
        assert dropped is not None and incoming_traceparent(dropped.encode()) == dropped
        assert int(dropped[-2:], 16) & 1 == 0
        # A client's sampled trace is kept whatever the ratio (parent-based sampling).
        assert kept is not None and kept.split("-")[1] == CLIENT_TRACE
        assert int(kept[-2:], 16) & 1 == 1
        spans = exporter.get_finished_spans()
        assert {s.context.trace_id for s in spans} == {int(CLIENT_TRACE, 16)}
        root, stages = tree(list(spans))
        assert list(stages) == STAGES
        assert root.parent is not None and f"{root.parent.span_id:016x}" == CLIENT_SPAN
        assert kept.split("-")[2] == f"{stages['forward'].context.span_id:016x}"
