"""Two gateway replicas apply a new routing state file within one poll, with no restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from engines.standin.process import StandinProcess
from gateway.app import build_services
from gateway.config import ConfigError, Settings
from gateway.routing.state import RoutingState, write_state
from tests.support import CLIENT_KEY, EngineSpec, RunningGateway, gateway_config, serve_in_thread

MSGS: Any = [{"role": "user", "content": "prove the lemma about matrix rank step by step"}]


def tier_of(gw: RunningGateway) -> str:
    client = openai.OpenAI(base_url=gw.v1, api_key=CLIENT_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=MSGS, max_tokens=4
    )
    return raw.headers["x-tollgate-tier"]


def settle(gws: list[RunningGateway], tier: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while any(tier_of(gw) != tier for gw in gws):
        if time.monotonic() > deadline:
            raise AssertionError(f"replicas did not move to {tier}")
        time.sleep(0.02)


def test_replicas_pick_up_a_new_threshold(
    standin_pair: dict[str, StandinProcess], tmp_path: Path
) -> None:
    state = tmp_path / "shared" / "routing-state.json"
    write_state(state, RoutingState(threshold=1.0))  # nothing is sure enough: all small

    def replica(i: int) -> Settings:
        tmp = tmp_path / f"replica{i}"
        tmp.mkdir()
        specs = [
            EngineSpec("small-0", standin_pair["small"].base_url, "small", "standin-small"),
            EngineSpec("large-0", standin_pair["large"].base_url, "large", "standin-large"),
        ]
        routing = {"policy": "learned", "state_file": str(state), "state_poll_s": 0.05}
        return Settings(**gateway_config(tmp, specs, routing=routing))

    with serve_in_thread(replica(0)) as a, serve_in_thread(replica(1)) as b:
        gws = [a, b]
        assert [tier_of(gw) for gw in gws] == ["small", "small"]  # read at start
        for gw in gws:
            learned = gw.services.router.learned
            assert learned is not None and learned.threshold == 1.0
        write_state(state, RoutingState(threshold=0.0, target_large_share=1.0))
        settle(gws, "large")
        write_state(state, RoutingState(threshold=0.9999))
        settle(gws, "small")
        assert all(gw.services.routing_state.applied == 3 for gw in gws)


def test_a_damaged_state_file_stops_the_start(
    standin_pair: dict[str, StandinProcess], tmp_path: Path
) -> None:
    state = tmp_path / "routing-state.json"
    state.write_text('{"threshold": 7}')
    specs = [
        EngineSpec("small-0", standin_pair["small"].base_url, "small", "standin-small"),
        EngineSpec("large-0", standin_pair["large"].base_url, "large", "standin-large"),
    ]
    cfg = gateway_config(tmp_path, specs, routing={"policy": "learned", "state_file": str(state)})

    async def start() -> None:
        async with build_services(Settings(**cfg), monitor=False):
            raise AssertionError("the gateway started on a damaged state file")

    with pytest.raises(ConfigError, match=r"routing-state\.json: threshold"):
        asyncio.run(start())
