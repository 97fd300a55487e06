"""The OpenAPI document: valid OpenAPI 3.1, complete, and served behind the admin token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from openapi_spec_validator import validate

from gateway.api.openai import ENDPOINTS
from gateway.app import create_app
from gateway.config import Settings
from tests.support import (
    ADMIN_TOKEN,
    CLIENT_KEY,
    EngineSpec,
    RunningGateway,
    free_port,
    gateway_config,
    serve_in_thread,
)

ENGINE = [EngineSpec("small-0", "http://127.0.0.1:9", "small", "standin-small")]


def settings(tmp_path: Path, **server: Any) -> Settings:
    return Settings(**gateway_config(tmp_path, ENGINE, quotas={"backend": "local"}, server=server))


def served(apps: list[FastAPI]) -> set[tuple[str, str]]:
    """(path, method) of every route the apps answer, the raw generation routes too."""
    found = {(path, "post") for path in ENDPOINTS}
    for app in apps:
        for route in iter_route_contexts(app.routes):
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((str(route.path_format), method.lower()))
    return found


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item}


@pytest.mark.parametrize("admin_port", [False, True], ids=["one-listener", "admin-port"])
def test_the_document_is_valid_openapi_and_lists_every_route(
    tmp_path: Path, admin_port: bool
) -> None:
    cfg = settings(tmp_path, **({"admin_port": free_port()} if admin_port else {}))
    app = create_app(cfg)
    admin_app = app.state.admin_app
    apps = [app.app] + ([admin_app] if admin_app is not None else [])
    holder = apps[-1]  # the admin listener's app when there is one
    doc = orjson.loads(holder.state.openapi_json)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert served(apps) == documented(doc)
    if admin_port:
        assert not hasattr(app.app.state, "openapi_json")  # not on the client listener


def test_the_document_describes_auth_bodies_and_errors(tmp_path: Path) -> None:
    doc = orjson.loads(create_app(settings(tmp_path)).app.state.openapi_json)
    schemas = doc["components"]["schemas"]
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"clientKey": []}]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert schemas["ChatCompletionRequest"]["properties"]["n"]["anyOf"][0]["type"] == "integer"
    assert set(chat["responses"]) == {"200", "400", "401", "403", "404", "413", "429"} | {
        "502",
        "503",
        "504",
    }
    assert {"application/json", "text/event-stream"} == set(chat["responses"]["200"]["content"])
    assert set(schemas["ErrorDetail"]["required"]) == {"message", "type", "param", "code"}
    create_key = doc["paths"]["/admin/keys"]["post"]
    assert create_key["security"][0] == {"adminToken": []}
    assert "KeyCreate" in create_key["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert doc["paths"]["/health"]["get"]["security"] == []
    for item in doc["paths"].values():  # our handler answers 400, never FastAPI's 422
        for operation in item.values():
            assert "422" not in operation["responses"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with serve_in_thread(settings(tmp_path_factory.mktemp("schema"))) as gw:
        yield gw


def test_served_behind_the_admin_token(gateway: RunningGateway) -> None:
    url = gateway.base_url + "/openapi.json"
    assert httpx.get(url).status_code == 401
    wrong = httpx.get(url, headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"
    ok = httpx.get(url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "application/json"
    assert "/v1/chat/completions" in ok.json()["paths"]
