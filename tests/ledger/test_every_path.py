"""Money on every path: each request that reached an engine gets one ledger record and a
charge, whatever its end, written to a real PostgreSQL ledger.

Engines that did work are billed for it (estimated, and marked so, when the engine gave
no usage); an engine that refused or failed before producing anything costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.standin.process import StandinProcess
from gateway.config import Settings
from gateway.ledger.record import LedgerRecord
from tests.support import (
    CLIENT_KEY,
    EngineSpec,
    PostgresCluster,
    RunningGateway,
    gateway_config,
    serve_in_thread,
)
from tests.support.standin import reset
from tests.support.standin import set_fault as fault

pytestmark = pytest.mark.postgres

URL_PATH = "/chat/completions"
HEADERS = {"authorization": f"Bearer {CLIENT_KEY}"}
MSGS = [{"role": "user", "content": "Count to a hundred, please."}]


@pytest.fixture(scope="module")
def gw(
    standin_pair: dict[str, StandinProcess],
    pg_cluster: PostgresCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    tmp: Path = tmp_path_factory.mktemp("paths")
    name = pg_cluster.create_database()
    engine = standin_pair["small"]
    cfg = gateway_config(
        tmp,
        [EngineSpec("small-0", engine.base_url, "small", "standin-small")],
        ledger={"url": pg_cluster.url(name)},
        timeouts={"connect_s": 1, "ttft_s": 1.0, "idle_s": 0.5, "total_s": 1.5},
        routing={"fallback": False, "retries": {"attempts": 1}},
    )
    try:
        with serve_in_thread(Settings(**cfg)) as gw:
            yield gw
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture
def engine(standin_pair: dict[str, StandinProcess]) -> Iterator[StandinProcess]:
    p = standin_pair["small"]
    reset(p)
    yield p
    reset(p)


def record_of(gw: RunningGateway, rid: str) -> LedgerRecord:
    """The one ledger row of request ``rid``, once the writer has written it."""
    store = gw.services.ledger.store
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in store.all_records() if r.request_id == rid]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(rows) == 1, f"{len(rows)} ledger rows for {rid}"
    return rows[0]


def post(gw: RunningGateway, rid: str, timeout: float = 10, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.v1 + URL_PATH,
        headers={**HEADERS, "x-request-id": rid},
        json={"model": "small", "messages": MSGS, **body},
        timeout=timeout,
    )


def stream_then_leave(gw: RunningGateway, rid: str, after_chunks: int, read_s: float) -> None:
    """Open a stream, read ``after_chunks`` events, then hang up (or give up waiting)."""
    body = {"model": "small", "messages": MSGS, "stream": True, "max_tokens": 200}
    headers = {**HEADERS, "x-request-id": rid}
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=read_s)) as client,
            client.stream("POST", gw.v1 + URL_PATH, headers=headers, json=body) as resp,
        ):
            seen = 0
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    seen += 1
                    if seen >= after_chunks:
                        return
    except httpx.ReadTimeout:  # headers wait for the first token: it never came in time
        return


def priced(gw: RunningGateway) -> Callable[[LedgerRecord], int]:
    price = gw.services.pipeline.meter.prices.price("standin-small")
    return lambda r: price.cost_nusd(r.prompt_tokens, r.completion_tokens, r.cached_tokens)


def test_unary_success(gw: RunningGateway, engine: StandinProcess) -> None:
    resp = post(gw, "path-unary-ok", max_tokens=5)
    assert resp.status_code == 200
    rec = record_of(gw, "path-unary-ok")
    usage = resp.json()["usage"]
    assert (rec.status, rec.http_status, rec.usage_estimated) == ("ok", 200, False)
    assert (rec.prompt_tokens, rec.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert rec.cost_nusd == priced(gw)(rec) > 0


def test_stream_success(gw: RunningGateway, engine: StandinProcess) -> None:
    resp = post(gw, "path-stream-ok", max_tokens=5, stream=True)
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    rec = record_of(gw, "path-stream-ok")
    assert (rec.status, rec.usage_estimated, rec.completion_tokens) == ("ok", False, 5)
    assert rec.cost_nusd == priced(gw)(rec) > 0


def test_engine_error_costs_nothing(gw: RunningGateway, engine: StandinProcess) -> None:
    fault(engine, mode="error_5xx", status=500)
    assert post(gw, "path-unary-500", max_tokens=5).status_code == 502
    rec = record_of(gw, "path-unary-500")
    assert (rec.status, rec.http_status, rec.cost_nusd) == ("error", 502, 0)


def test_stream_failing_midway_bills_what_was_sent(
    gw: RunningGateway, engine: StandinProcess
) -> None:
    fault(engine, mode="error_mid_stream", tokens=3)
    resp = post(gw, "path-stream-error", max_tokens=20, stream=True)
    assert resp.status_code == 200 and '"error"' in resp.text
    rec = record_of(gw, "path-stream-error")
    assert (rec.status, rec.usage_estimated) == ("error", True)
    assert rec.completion_tokens >= 3 and rec.cost_nusd == priced(gw)(rec) > 0


def test_unary_time_out_bills_the_prompt(gw: RunningGateway, engine: StandinProcess) -> None:
    fault(engine, mode="slow_first_token", ms=5000)
    assert post(gw, "path-unary-timeout", max_tokens=5).status_code == 504
    rec = record_of(gw, "path-unary-timeout")
    assert (rec.status, rec.http_status, rec.usage_estimated) == ("timeout", 504, True)
    assert rec.prompt_tokens > 0 and rec.cost_nusd == priced(gw)(rec) > 0


def test_stream_stalling_midway_times_out_and_bills_the_output(
    gw: RunningGateway, engine: StandinProcess
) -> None:
    fault(engine, mode="stall_after", tokens=2)
    resp = post(gw, "path-stream-stall", max_tokens=20, stream=True)
    assert resp.status_code == 200 and "idle time between chunks" in resp.text
    rec = record_of(gw, "path-stream-stall")
    assert (rec.status, rec.http_status, rec.usage_estimated) == ("timeout", 504, True)
    assert rec.completion_tokens >= 2 and rec.cost_nusd == priced(gw)(rec) > 0


def test_unary_hang_up_bills_the_prompt(gw: RunningGateway, engine: StandinProcess) -> None:
    fault(engine, mode="slow_first_token", ms=800)
    with pytest.raises(httpx.ReadTimeout):
        post(gw, "path-unary-gone", timeout=0.3, max_tokens=5)
    rec = record_of(gw, "path-unary-gone")
    assert (rec.status, rec.http_status, rec.usage_estimated) == ("client_disconnect", 499, True)
    assert rec.prompt_tokens > 0 and rec.completion_tokens == 0
    assert rec.cost_nusd == priced(gw)(rec) > 0


def test_stream_hang_up_before_the_first_byte_bills_the_prompt(
    gw: RunningGateway, engine: StandinProcess
) -> None:
    fault(engine, mode="slow_first_token", ms=800)
    stream_then_leave(gw, "path-stream-gone-early", after_chunks=1, read_s=0.3)
    rec = record_of(gw, "path-stream-gone-early")
    assert (rec.status, rec.http_status, rec.usage_estimated) == ("client_disconnect", 499, True)
    assert rec.prompt_tokens > 0 and rec.cost_nusd == priced(gw)(rec) > 0


def test_stream_hang_up_after_the_first_byte_bills_the_output(
    gw: RunningGateway, engine: StandinProcess
) -> None:
    stream_then_leave(gw, "path-stream-gone-late", after_chunks=3, read_s=5)
    rec = record_of(gw, "path-stream-gone-late")
    assert (rec.status, rec.http_status, rec.usage_estimated) == ("client_disconnect", 499, True)
    assert 3 <= rec.completion_tokens < 200 and rec.cost_nusd == priced(gw)(rec) > 0
