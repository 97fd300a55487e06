"""With server.admin_port set, /admin listens only there."""

from __future__ import annotations

from pathlib import Path

import httpx

from engines.standin.process import StandinProcess
from tests.support import (
    ADMIN_TOKEN,
    EngineSpec,
    GatewayProcess,
    free_port,
    gateway_config,
    wait_http,
    write_config,
)


def test_admin_api_on_its_own_port(tmp_path: Path) -> None:
    with StandinProcess(model="m") as engine:
        port, admin_port = free_port(), free_port()
        cfg = gateway_config(
            tmp_path,
            [EngineSpec("e0", engine.base_url, "small", "m")],
            port=port,
            server={"admin_port": admin_port},
        )
        with GatewayProcess(write_config(tmp_path, cfg), port) as gw:
            admin = f"http://127.0.0.1:{admin_port}"
            wait_http(admin + "/admin/engines", ok=(200, 401))
            auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            r = httpx.get(admin + "/admin/engines", headers=auth)
            assert r.status_code == 200 and r.json()["engines"][0]["name"] == "e0"
            assert httpx.get(admin + "/admin/engines").status_code == 401
            # Not on the client port.
            assert httpx.get(gw.base_url + "/admin/engines", headers=auth).status_code == 404
            gw.terminate()
            assert gw.wait(20) == 0
