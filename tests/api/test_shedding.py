"""Overload refusals in the HTTP protocol: a prebuilt 503 before the request is a task."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.api.shedding import refusal_bytes
from gateway.config import Settings
from gateway.upstream.mock import MockReply, MockRequest, MockTransport
from tests.support import CLIENT_KEY, EngineSpec, RunningGateway, gateway_config, serve_in_thread

BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ANSWER = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


@dataclass
class Held:
    """A gateway with ``max_in_flight: 1`` whose one slot a request is holding."""

    gw: RunningGateway
    transport: MockTransport
    #: Route-level overload checks, i.e. requests that reached the ASGI app's route.
    routed: list[int]
    held: Future[httpx.Response]


@pytest.fixture
def held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    gate = threading.Event()

    async def slow(request: MockRequest) -> MockReply:
        await asyncio.to_thread(gate.wait, 10)
        return MockReply.json(ANSWER)

    cfg = gateway_config(
        tmp_path,
        [EngineSpec("small-0", "http://small-0", "small", "m")],
        server={"max_in_flight": 1},
        ledger={"enabled": False},
    )
    settings = Settings.model_validate(cfg)
    transport = MockTransport(slow, timeouts=settings.timeouts)
    with serve_in_thread(settings, transport=transport, monitor=False) as gw:
        guard = gw.services.overload
        routed: list[int] = []
        check = guard.check

        def counting_check(in_flight: int) -> None:
            routed.append(in_flight)
            check(in_flight)

        monkeypatch.setattr(guard, "check", counting_check)
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(
                httpx.post, f"{gw.v1}/chat/completions", json=BODY, headers=_auth(), timeout=10
            )
            while not transport.requests:
                time.sleep(0.01)
            try:
                yield Held(gw, transport, routed, future)
            finally:
                gate.set()
                assert future.result().status_code == 200


def _auth() -> dict[str, str]:
    return {"authorization": f"Bearer {CLIENT_KEY}"}


def _refusals(gw: RunningGateway, signal: str) -> float:
    value: float = gw.services.metrics.overload_refusals.labels(signal)._value.get()
    return value


def test_the_openai_client_gets_a_503_with_retry_after_from_the_protocol(held: Held) -> None:
    client = openai.OpenAI(base_url=held.gw.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)
    t = time.perf_counter()
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    took = time.perf_counter() - t
    err = exc.value
    assert err.status_code == 503 and err.code == "gateway_overloaded"
    assert err.response.headers["retry-after"] == "1"
    assert err.response.headers["content-type"] == "application/json"
    assert isinstance(err.body, dict) and err.body["type"] == "service_unavailable"
    assert "over capacity" in err.body["message"] and err.body["param"] is None
    assert took < 1.0
    # Refused before the request became a task: the route never saw it, nor an engine.
    assert held.routed == [0]  # only the held request passed the route's check
    assert len(held.transport.requests) == 1
    assert _refusals(held.gw, "in_flight") == 1


def _read_answer(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a content-length: (status line, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the answer"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return status.encode(), headers, rest


def _raw_post(body: bytes, extra: str = "") -> bytes:
    return (
        f"POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {CLIENT_KEY}"
        f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def test_a_refused_connection_stays_open_and_health_is_never_refused(held: Held) -> None:
    body = orjson.dumps(BODY)
    host, port = held.gw.settings.server.host, held.gw.settings.server.port
    with socket.create_connection((host, port), timeout=10) as sock:
        # The body arrives in two writes: the refusal waits for nothing and drops it.
        request = _raw_post(body)
        sock.sendall(request[:-10])
        status, headers, answer = _read_answer(sock)
        sock.sendall(request[-10:])
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert headers["retry-after"] == "1" and "connection" not in headers
        assert orjson.loads(answer)["error"]["code"] == "gateway_overloaded"
        # Same connection, next request: /health is served while overloaded.
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        status, _, _ = _read_answer(sock)
        assert status.startswith(b"HTTP/1.1 200")
        # ...and a request with Connection: close gets its refusal, then the close.
        sock.sendall(_raw_post(body, "connection: close\r\n"))
        status, headers, _ = _read_answer(sock)
        assert status.startswith(b"HTTP/1.1 503") and headers["connection"] == "close"
        assert sock.recv(1) == b""
    assert held.routed == [0]
    assert _refusals(held.gw, "in_flight") == 2


def test_refusal_bytes_are_one_well_formed_answer() -> None:
    raw = refusal_bytes("loop_lag", True, [(b"date", b"Thu, 03 Dec 2026 16:00:00 GMT")])
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    headers: dict[bytes, Any] = dict(line.split(b": ", 1) for line in lines[1:])
    assert int(headers[b"content-length"]) == len(body)
    assert headers[b"retry-after"] == b"1" and b"connection" not in headers
    assert headers[b"date"].startswith(b"Thu")
    error = orjson.loads(body)["error"]
    assert error["code"] == "gateway_overloaded" and "event loop is behind" in error["message"]
    closing = refusal_bytes("in_flight", False, [])
    assert b"\r\nconnection: close\r\n" in closing.split(b"\r\n\r\n")[0] + b"\r\n"
