"""Four stand-in engines (two per tier) for the fault tests, and helpers to drive them.

The fault tests (``tests/integration/test_faults_*.py``) share this: the fleet is
started once per module (the ``engines`` and ``fleet`` fixtures in
``tests/integration/conftest.py``) and reset before each test; each test serves its own
gateway with the config it needs. Waiting is done by polling state (engine stats,
breaker state), never by sleeping a guessed time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from engines.standin.process import StandinProcess
from gateway.config import Settings
from tests.support.configs import CLIENT_KEY, EngineSpec, gateway_config
from tests.support.net import free_port
from tests.support.servers import RunningGateway
from tests.support.standin import reset

MSGS: list[ChatCompletionMessageParam] = [{"role": "user", "content": "tell me about tides"}]
FAST = {"health_interval_s": 0.3, "metrics_interval_s": 0.3}

Engines = dict[str, StandinProcess]


@contextmanager
def running_fleet() -> Iterator[Engines]:
    """Four stand-ins, ``small-a``, ``small-b``, ``large-a`` and ``large-b``."""
    procs = {
        "small-a": StandinProcess(model="standin-small", tpot_ms=1, max_num_seqs=64),
        "small-b": StandinProcess(model="standin-small", tpot_ms=1, max_num_seqs=64),
        "large-a": StandinProcess(model="standin-large", tpot_ms=1, max_num_seqs=64),
        "large-b": StandinProcess(model="standin-large", tpot_ms=1, max_num_seqs=64),
    }
    for p in procs.values():
        p.start()
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def reset_fleet(engines: Engines) -> Engines:
    """Restart the stand-ins an earlier test stopped, and clear every fault and stat."""
    for p in engines.values():
        if p._proc is None:  # stopped by an earlier test
            p.start()
        reset(p)
    return engines


def spec(fleet: Engines, name: str, **extra: Any) -> EngineSpec:
    tier = name.split("-")[0]
    return EngineSpec(name, fleet[name].base_url, tier, f"standin-{tier}", extra)


def dead(name: str, tier: str) -> EngineSpec:
    """An engine whose port nothing listens on: connections are refused."""
    return EngineSpec(name, f"http://127.0.0.1:{free_port()}", tier, f"standin-{tier}")


def settings(tmp: Path, specs: list[EngineSpec], routing: dict[str, Any] | None = None,
             **sections: Any) -> Settings:  # fmt: skip
    r = {"breaker": FAST, **(routing or {})}
    return Settings(**gateway_config(tmp, specs, routing=r, **sections))


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30)


def stream_text(c: openai.OpenAI, model: str = "small", **kw: Any) -> str:
    chunks = c.chat.completions.create(model=model, messages=MSGS, stream=True, **kw)
    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
