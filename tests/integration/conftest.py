from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from engines.standin.process import StandinProcess
from gateway.config import Settings
from tests.support import CLIENT_KEY, EngineSpec, RunningGateway, gateway_config, serve_in_thread
from tests.support.fleet import Engines, reset_fleet, running_fleet
from tests.support.standin import reset as reset_standin


def pair_specs(pair: dict[str, StandinProcess]) -> list[EngineSpec]:
    return [
        EngineSpec("small-0", pair["small"].base_url, "small", "standin-small"),
        EngineSpec("large-0", pair["large"].base_url, "large", "standin-large"),
        EngineSpec(
            "embed-0", pair["embed"].base_url, "embed", "standin-embed", {"embeddings": True}
        ),
    ]


def reset(pair: dict[str, StandinProcess]) -> None:
    for p in pair.values():
        reset_standin(p)


@pytest.fixture(scope="module")
def gateway_module(
    standin_pair: dict[str, StandinProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp: Path = tmp_path_factory.mktemp("gw")
    cfg = gateway_config(tmp, pair_specs(standin_pair), routing={"fallback": False})
    with serve_in_thread(Settings(**cfg)) as gw:
        yield gw


@pytest.fixture
def gateway(
    gateway_module: RunningGateway, standin_pair: dict[str, StandinProcess]
) -> RunningGateway:
    reset(standin_pair)
    for e in gateway_module.services.pool.engines.values():
        e.healthy = True
    return gateway_module


@pytest.fixture
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30)


@pytest.fixture
def aclient(gateway: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    """The fault tests' four stand-ins, shared by a module (``tests/support/fleet.py``)."""
    with running_fleet() as procs:
        yield procs


@pytest.fixture
def fleet(engines: Engines) -> Engines:
    """The four stand-ins, running and reset (no fault, zeroed stats)."""
    return reset_fleet(engines)
