"""Prometheus: the scrape configs and alert rules pass promtool, the rules' unit tests
pass, and every alert has its runbook in deploy/README.md."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.deploy.conftest import DEPLOY, DeployTools, run_tool

PROM = DEPLOY / "prometheus"


def alerts() -> set[str]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return {r["alert"] for g in groups for r in g["rules"] if "alert" in r}


def test_alert_rules_pass_promtool_check(deploy_tools: DeployTools) -> None:
    run_tool([deploy_tools["promtool"], "check", "rules", str(PROM / "alerts.yml")])


def test_alert_rules_unit_tests_pass(deploy_tools: DeployTools) -> None:
    out = run_tool([deploy_tools["promtool"], "test", "rules", "alerts.test.yml"], cwd=PROM)
    assert "SUCCESS" in out.stdout + out.stderr


def test_a_wrong_expectation_fails_the_unit_tests(
    deploy_tools: DeployTools, tmp_path: Path
) -> None:
    (tmp_path / "alerts.yml").write_text((PROM / "alerts.yml").read_text())
    tests = (PROM / "alerts.test.yml").read_text().replace("tier: small}", "tier: large}", 1)
    (tmp_path / "alerts.test.yml").write_text(tests)
    proc = run_tool(
        [deploy_tools["promtool"], "test", "rules", "alerts.test.yml"], cwd=tmp_path, check=False
    )
    assert proc.returncode != 0


def test_compose_scrape_config_passes_promtool_check(deploy_tools: DeployTools) -> None:
    # Also loads the rule files it names (alerts.yml beside it).
    run_tool([deploy_tools["promtool"], "check", "config", str(PROM / "prometheus.yml")])


def test_kubernetes_scrape_config_passes_promtool_check(
    deploy_tools: DeployTools, tmp_path: Path
) -> None:
    """Debian's promtool is built without Kubernetes service discovery, so it rejects
    `kubernetes_sd_configs` as an unknown field: the copy checked here swaps each for an
    empty static_configs and keeps the rest (relabelling, regexes, rule files) as is."""
    config = yaml.safe_load((PROM / "prometheus-k8s.yml").read_text())
    for job in config["scrape_configs"]:
        sd = job.pop("kubernetes_sd_configs")
        assert [c["role"] for c in sd] == ["pod"]
        job["static_configs"] = [{"targets": []}]
    (tmp_path / "prometheus-k8s.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "alerts.yml").write_text((PROM / "alerts.yml").read_text())
    run_tool([deploy_tools["promtool"], "check", "config", str(tmp_path / "prometheus-k8s.yml")])


def test_every_alert_is_unit_tested() -> None:
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts.test.yml").read_text()))
    # The slow-burn twins share the fast alert's expressions and runbook.
    untested = alerts() - tested
    assert untested <= {
        "TollgateErrorBudgetBurnSlow",
        "TollgateLatencyBudgetBurnSlow",
        "TollgateEngineKVCacheFull",
        "TollgateQuotaSettlementsDropped",
        "TollgateLedgerDatabaseDown",
        "TollgateLedgerRecordsDropped",
        "TollgateKeysOutOfBudget",
    }, untested


def test_every_alert_has_a_runbook_in_the_readme() -> None:
    readme = (DEPLOY / "README.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#### (.+)$", readme, re.M)}
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in headings, (rule["alert"], anchor)
        # Each alert is named in its runbook, so a search from the page finds it.
        assert rule["alert"] in readme
