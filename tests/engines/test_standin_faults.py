"""The vLLM stand-in engine's faults, over HTTP: 5xx bursts, stalls, error frames, slow
first tokens, hangs, dropped connections, and a stopped engine refusing.

Servers are real child processes (`fast` and `paced`, see `tests/support/standin.py`);
each test resets the server's stats and fault first.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from engines.standin.process import StandinProcess, run_standin
from tests.support.standin import (
    CHAT,
    MESSAGES,
    MODEL,
    client,
    eventually,
    set_fault,
    sse_events,
    stats,
)

# ---- faults -----------------------------------------------------------------------


def test_5xx_burst_then_recovery(fast: StandinProcess) -> None:
    set_fault(fast, mode="error_5xx", status=503, count=2)
    with client(fast) as oai:
        for _ in range(2):
            with pytest.raises(openai.InternalServerError) as caught:
                oai.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert caught.value.status_code == 503
            assert caught.value.response.json()["error"]["type"] == "ServiceUnavailableError"
        oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert httpx.get(fast.base_url + "/_standin/faults").json()["mode"] == "none"
    assert stats(fast)["faults_injected"] == 2


def test_5xx_with_probability_fails_some_requests(fast: StandinProcess) -> None:
    set_fault(fast, mode="error_5xx", probability=0.5)
    url = fast.base_url + "/v1/chat/completions"
    with httpx.Client() as http:
        codes = [http.post(url, json=CHAT | {"max_tokens": 1}).status_code for _ in range(40)]
    assert 0 < codes.count(500) < 40 and set(codes) == {200, 500}


def test_stall_after_streams_n_tokens_then_hangs(fast: StandinProcess) -> None:
    set_fault(fast, mode="stall_after", tokens=2)
    contents: list[str | None] = []
    with client(fast, timeout=0.6) as oai:
        with pytest.raises(openai.APITimeoutError):
            for chunk in oai.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                contents.append(chunk.choices[0].delta.content)
        with pytest.raises(openai.APITimeoutError):
            oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert contents == ["", " tok1", " tok2"]
    eventually(lambda: stats(fast)["aborted"] == 2 and stats(fast)["in_flight"] == 0)


def test_error_mid_stream_sends_an_error_frame(fast: StandinProcess) -> None:
    set_fault(fast, mode="error_mid_stream", tokens=3)
    contents: list[str | None] = []
    with client(fast) as oai:
        with pytest.raises(openai.APIError, match="Internal server error") as caught:
            for chunk in oai.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                contents.append(chunk.choices[0].delta.content)
        assert caught.value.body == {
            "message": "Internal server error",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert contents == ["", " tok1", " tok2", " tok3"]
    raw = httpx.post(fast.base_url + "/v1/completions", json={"prompt": "x", "stream": True})
    events = sse_events(raw.text)
    assert events[-1] == "[DONE]" and '"error"' in events[-2] and len(events) == 3 + 2


def test_slow_first_token_delays_only_the_first_token(fast: StandinProcess) -> None:
    set_fault(fast, mode="slow_first_token", ms=250)
    with client(fast) as oai:
        start = time.monotonic()
        stream = oai.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=2, stream=True
        )
        next(iter(stream))
        first = time.monotonic() - start
        rest = list(stream)
    assert first >= 0.245
    assert len(rest) == 2


def test_hang_never_answers(fast: StandinProcess) -> None:
    set_fault(fast, mode="hang")
    with client(fast, timeout=0.3) as oai:
        with pytest.raises(openai.APITimeoutError):
            oai.chat.completions.create(model=MODEL, messages=MESSAGES)
        with pytest.raises(openai.APITimeoutError):
            oai.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    eventually(lambda: stats(fast)["aborted"] == 2 and stats(fast)["in_flight"] == 0)


def test_close_drops_the_connection(fast: StandinProcess) -> None:
    set_fault(fast, mode="close", count=1)
    with client(fast) as oai:
        with pytest.raises(openai.APIConnectionError) as caught:
            oai.chat.completions.create(model=MODEL, messages=MESSAGES)
        # openai may bundle its own httpx fork, so match the transport error by name
        assert type(caught.value.__cause__).__name__ == "RemoteProtocolError"
        oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert (stats(fast)["dropped"], stats(fast)["completed"]) == (1, 1)


def test_fault_endpoint_rejects_bad_faults(fast: StandinProcess) -> None:
    url = fast.base_url + "/_standin/faults"
    for bad in ({"mode": "explode"}, {"mode": "error_5xx", "status": "x"}, {"tokens": -1}):
        response = httpx.post(url, json=bad)
        assert response.status_code == 400 and response.json()["error"]["code"] == 400
    assert httpx.get(url).json()["mode"] == "none"
    set_fault(fast, mode="none")  # clearing a fault explicitly injects nothing
    httpx.post(fast.base_url + "/v1/chat/completions", json=CHAT).raise_for_status()
    assert stats(fast)["faults_injected"] == 0


def test_stopped_engine_refuses_and_restarts_on_the_same_port() -> None:
    process = StandinProcess(model=MODEL, fault="error_5xx:502,count=1")
    base_url = process.start()
    try:
        url = base_url + "/v1/chat/completions"
        assert httpx.post(url, json=CHAT).status_code == 502  # the CLI fault is armed
        assert httpx.post(url, json=CHAT).status_code == 200
        process.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.post(url, json=CHAT)
        assert process.start() == base_url
        assert httpx.post(url, json=CHAT).status_code == 502  # a fresh process, re-armed
    finally:
        process.stop()


def test_run_standin_yields_a_base_url_that_refuses_after_exit() -> None:
    with run_standin(model="other", max_model_len=64) as base_url:
        assert httpx.get(base_url + "/v1/models").json()["data"][0]["max_model_len"] == 64
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url + "/health")
