"""SIGTERM: stop accepting, let in-flight streams finish, exit 0."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from engines.standin.process import StandinProcess
from tests.support import (
    CLIENT_KEY,
    EngineSpec,
    GatewayProcess,
    free_port,
    gateway_config,
    write_config,
)


def test_sigterm_drains_in_flight_stream_and_exits_zero(tmp_path: Path) -> None:
    with StandinProcess(model="slow", tpot_ms=60) as engine:
        port = free_port()
        cfg = gateway_config(
            tmp_path,
            [EngineSpec("e0", engine.base_url, "small", "slow")],
            port=port,
            server={"drain_seconds": 20},
        )
        gw = GatewayProcess(write_config(tmp_path, cfg), port).start()
        lines: list[str] = []
        first = threading.Event()

        def stream() -> None:
            with httpx.stream(
                "POST",
                gw.base_url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
                json={
                    "model": "small",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 20,
                    "stream": True,
                },
                timeout=30,
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        lines.append(line)
                        first.set()

        t = threading.Thread(target=stream)
        t.start()
        assert first.wait(10)
        gw.terminate()
        t.join(30)
        code = gw.wait(30)
        assert code == 0
        assert lines[-1] == "data: [DONE]"
        assert sum("tok" in line for line in lines) == 20  # the stream finished in full
        log = gw.log.read_text()
        assert "Traceback" not in log
        try:
            r = httpx.get(gw.base_url + "/health", timeout=2)
            refused = False
        except httpx.ConnectError:
            refused = True
        assert refused, f"gateway still answering after exit: {r.status_code}"
        gw.stop()
