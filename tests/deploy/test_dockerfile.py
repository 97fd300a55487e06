"""Dockerfile.gpu passes hadolint, and its ENTRYPOINTs are what deploy/ assumes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from tests.deploy.conftest import ROOT, DeployTools, run_tool

DOCKERFILE = ROOT / "Dockerfile.gpu"


def stage_instruction(stage: str, instruction: str) -> list[str]:
    """The JSON-form ``instruction`` (ENTRYPOINT, CMD) of build stage ``stage``."""
    current, found = None, None
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.upper().startswith("FROM "):
            parts = line.split()
            current = parts[3] if len(parts) >= 4 and parts[2].upper() == "AS" else None
        elif current == stage and line.upper().startswith(instruction + " "):
            found = json.loads(line[len(instruction) + 1 :])
    assert isinstance(found, list), f"no {instruction} in stage {stage}"
    return [str(a) for a in found]


def test_dockerfile_passes_hadolint(deploy_tools: DeployTools) -> None:
    # Any finding fails, info included; an accepted one needs an inline
    # `# hadolint ignore=DLxxxx` with its reason on the line above.
    run_tool([deploy_tools["hadolint"], "--failure-threshold", "info", str(DOCKERFILE)])


def test_hadolint_reports_a_finding(deploy_tools: DeployTools, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nUSER tollgate\nRUN cd /tmp && ls\n")
    proc = run_tool([deploy_tools["hadolint"], str(bad)], check=False)
    assert proc.returncode != 0 and "DL3003" in proc.stdout


def test_gateway_entrypoint_is_the_installed_cli() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert stage_instruction("gateway", "ENTRYPOINT") == ["tollgate"]
    assert scripts["tollgate"] == "gateway.cli:main"
    assert stage_instruction("gateway", "CMD") == [
        "serve",
        "--config",
        "/etc/tollgate/tollgate.yaml",
    ]


def test_gateway_runs_as_a_numeric_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    gateway = text.split(" AS gateway", 1)[1].split("\nFROM ", 1)[0]
    users = [line.split()[1] for line in gateway.splitlines() if line.startswith("USER ")]
    assert users == ["10001:10001"]
