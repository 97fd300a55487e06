"""Driving a stand-in engine over HTTP in tests: its two test servers, clients, probes.

The stand-in tests (``tests/engines/test_standin_*.py``) run two real child processes
(``StandinProcess``): ``fast`` (no delays, embeddings on) and ``paced`` (TTFT 60 ms,
TPOT 15 ms, two sequences at a time); the fixtures are in ``tests/engines/conftest.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from engines.standin.process import StandinProcess

MODEL = "standin-test"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the nice people"},
]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
TTFT, TPOT = 0.060, 0.015  # the paced server's timing, in seconds


def fast_process() -> StandinProcess:
    """No delays, embeddings on, a seeded fault RNG."""
    return StandinProcess(model=MODEL, embeddings=True, seed=7)


def paced_process() -> StandinProcess:
    """TTFT and TPOT as above, two sequences at a time (the rest wait)."""
    return StandinProcess(model=MODEL, ttft_ms=60, tpot_ms=15, max_num_seqs=2)


def reset(process: StandinProcess) -> StandinProcess:
    """Zero the server's stats and clear its fault."""
    httpx.post(process.base_url + "/_standin/reset", timeout=5).raise_for_status()
    return process


def client(process: StandinProcess, timeout: float = 10) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=process.base_url + "/v1", api_key="unused", max_retries=0, timeout=timeout
    )


def async_client(process: StandinProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=process.base_url + "/v1", api_key="unused", max_retries=0, timeout=10
    )


def stats(process: StandinProcess) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(process.base_url + "/_standin/stats", timeout=5).json()
    return data


def set_fault(process: StandinProcess, **fault: object) -> None:
    httpx.post(process.base_url + "/_standin/faults", json=fault, timeout=5).raise_for_status()


def metrics(process: StandinProcess) -> dict[str, float]:
    """Samples of `/metrics` by name, with labels other than model_name kept in the key."""
    text = httpx.get(process.base_url + "/metrics", timeout=5).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            name = name.replace(f',model_name="{MODEL}"', "")
            samples[name.replace(f'{{model_name="{MODEL}"}}', "")] = float(value)
    return samples


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def sse_events(raw: str) -> list[str]:
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]
