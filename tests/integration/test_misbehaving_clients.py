"""Clients that misbehave are bounded by limits (``server.*``), not by luck.

Slow headers and slow bodies get 408, idle sockets are closed, connections past the cap
are refused at once, and a stream whose client reads nothing is ended and billed as a
hang-up. Memory is measured on a separate gateway process holding many idle sockets.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from engines.standin.process import StandinProcess
from gateway.config import Settings
from tests.support import (
    CLIENT_KEY,
    EngineSpec,
    GatewayProcess,
    ListRecorder,
    RunningGateway,
    gateway_config,
    serve_in_thread,
    wait_for,
    write_config,
)
from tests.support.standin import reset, stats

LIMITS = {
    "header_timeout_s": 0.5,
    "body_timeout_s": 0.5,
    "idle_connection_s": 0.5,
    "send_timeout_s": 1.0,
    "max_connections": 50,
}


@pytest.fixture(scope="module")
def engine() -> Iterator[StandinProcess]:
    p = StandinProcess(model="standin-small", max_model_len=16384, max_num_seqs=64)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def gw(engine: StandinProcess, tmp_path: Path) -> Iterator[tuple[RunningGateway, ListRecorder]]:
    reset(engine)
    cfg = gateway_config(
        tmp_path,
        [EngineSpec("small-0", engine.base_url, "small", "standin-small")],
        server={**LIMITS, "keepalive_seconds": 15},
    )
    recorder = ListRecorder()
    with serve_in_thread(Settings(**cfg), recorder=recorder) as running:
        yield running, recorder


def connect(gw: RunningGateway, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((gw.settings.server.host, gw.settings.server.port))
    s.settimeout(5)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_headers_that_never_finish_get_408_and_the_connection_closes(
    gw: tuple[RunningGateway, ListRecorder],
) -> None:
    running, _ = gw
    with contextlib.closing(connect(running)) as s:
        t = time.monotonic()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        answer = read_all(s)  # ...and never the blank line that ends the headers
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert 0.4 <= time.monotonic() - t < 3


def test_a_body_that_never_finishes_gets_408(gw: tuple[RunningGateway, ListRecorder]) -> None:
    running, recorder = gw
    with contextlib.closing(connect(running)) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"model":'
        )
        head = b""
        while b"request_timeout" not in head and (chunk := s.recv(65536)):
            head += chunk
    assert head.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in head
    assert recorder.records == []  # refused before any engine work


def test_a_connection_that_sends_nothing_is_closed(
    gw: tuple[RunningGateway, ListRecorder],
) -> None:
    running, _ = gw
    with contextlib.closing(connect(running)) as s:
        t = time.monotonic()
        assert read_all(s) == b""
    assert 0.4 <= time.monotonic() - t < 3


def test_connections_past_the_cap_are_closed_at_once(
    gw: tuple[RunningGateway, ListRecorder],
) -> None:
    running, _ = gw
    held = [connect(running) for _ in range(50)]
    try:
        extra = connect(running)
        t = time.monotonic()
        with contextlib.closing(extra), contextlib.suppress(ConnectionResetError):
            assert read_all(extra) == b""
        assert time.monotonic() - t < 0.4  # refused, not left to the idle timer
    finally:
        for s in held:
            s.close()
    # once they are gone, requests are served again
    wait_for(lambda: _answers(running), timeout=5)


def _answers(gw: RunningGateway) -> bool:
    try:
        return httpx.get(gw.base_url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_stream_nobody_reads_is_ended_and_billed(
    gw: tuple[RunningGateway, ListRecorder], engine: StandinProcess
) -> None:
    running, recorder = gw
    body = orjson.dumps(
        {
            "model": "small",
            "stream": True,
            "n": 16,
            "max_tokens": 8000,
            "messages": [{"role": "user", "content": "write a long story"}],
        }
    )
    with contextlib.closing(connect(running, rcvbuf=4096)) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        # ...and never reads: the gateway's writes back up, then it gives up.
        wait_for(lambda: len(recorder.records) == 1, timeout=20)
        # The gateway dropped the connection: reading now ends in a reset, not in data
        # that keeps coming.
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while s.recv(1 << 20):
                pass
    seen = stats(engine)
    assert seen["in_flight"] == 0, seen  # the engine is not left working for nobody
    (rec,) = recorder.records
    assert (rec.status, rec.http_status) == ("client_disconnect", 499)
    assert rec.usage_estimated and rec.completion_tokens > 0 and rec.cost_nusd > 0
    assert running.services.pipeline.active == 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_thousands_of_idle_sockets_are_capped_and_cost_bounded_memory(
    engine: StandinProcess, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    cap = min(1000, want // 3)
    cfg = gateway_config(
        tmp_path,
        [EngineSpec("small-0", engine.base_url, "small", "standin-small")],
        server={"max_connections": cap, "idle_connection_s": 30},
    )
    port = cfg["server"]["port"]
    with GatewayProcess(write_config(tmp_path, cfg), port) as proc:
        pid = proc.proc.pid
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        before = rss_kib(pid)
        socks: list[socket.socket] = []
        try:
            for _ in range(cap * 2):
                socks.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(1.0)  # let the server accept (and refuse) them all
            open_now = int(Path(f"/proc/{pid}/fd").stat().st_nlink)  # a cheap sanity read
            grown = rss_kib(pid) - before
        finally:
            for s in socks:
                s.close()
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    assert open_now > 0
    # At most `cap` sockets were held, each for a few KiB: the growth is bounded.
    assert grown < cap * 40, f"RSS grew {grown} KiB for {cap} held connections"
    assert fds < cap  # after the clients left, the server holds none of them
