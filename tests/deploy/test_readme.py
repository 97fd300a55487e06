"""deploy/README.md's install walk-through names only things the manifests have: every
Secret and key the pods read is created there (and nothing else), the namespace labels
match the NetworkPolicies, and each object, ConfigMap, path and address it mentions exists."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.conftest import DEPLOY, ROOT

README = (DEPLOY / "README.md").read_text()
Doc = dict[str, Any]


def kubernetes_section() -> str:
    return README.split("## Kubernetes", 1)[1].split("\n## ", 1)[0]


def commands() -> str:
    """The shell blocks of the Kubernetes walk-through, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", kubernetes_section(), re.S)
    return "\n".join(blocks).replace("\\\n", " ")


def walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def named(rendered: list[Doc], kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in rendered if d["kind"] == kind}


def test_the_secrets_created_are_the_ones_the_pods_read(rendered: list[Doc]) -> None:
    created = set()
    for line in commands().splitlines():
        if m := re.search(r"create secret generic ([\w-]+)", line):
            keys = re.findall(r"--from-literal=([\w-]+)=", line)
            created |= {(m.group(1), k) for k in keys}
    read = {
        (n["secretKeyRef"]["name"], n["secretKeyRef"]["key"])
        for n in walk(rendered)
        if "secretKeyRef" in n
    }
    assert created == read


def test_namespace_labels_are_the_ones_the_policies_select(rendered: list[Doc]) -> None:
    labelled = set(re.findall(r"label namespace [\w-]+ ([\w./-]+=\w+)", commands()))
    selected = {
        f"{k}={v}"
        for policy in rendered
        if policy["kind"] == "NetworkPolicy"
        for n in walk(policy["spec"])
        if "namespaceSelector" in n
        for k, v in n["namespaceSelector"]["matchLabels"].items()
        if k != "kubernetes.io/metadata.name"
    }
    assert labelled == selected


@pytest.mark.parametrize(
    ("prefix", "kind"), [("job", "Job"), ("deployment", "Deployment"), ("svc", "Service")]
)
def test_objects_the_commands_name_exist(rendered: list[Doc], prefix: str, kind: str) -> None:
    names = set(re.findall(rf"\b{prefix}/([\w-]+)", commands()))
    assert names and names <= named(rendered, kind)


def test_the_port_forward_reaches_the_client_port(rendered: list[Doc]) -> None:
    m = re.search(r"port-forward svc/([\w-]+) (\d+):(\d+)", commands())
    assert m is not None
    service = next(d for d in rendered if d["kind"] == "Service" and d["metadata"]["name"] == m[1])
    assert int(m[3]) in [p["port"] for p in service["spec"]["ports"]]
    assert "/health/ready" in commands()


def test_names_in_backticks_exist(rendered: list[Doc]) -> None:
    maps = named(rendered, "ConfigMap")
    section = kubernetes_section()
    for name in ("prometheus-scrape", "prometheus-rules", "grafana-dashboard-tollgate"):
        assert f"`{name}`" in section
        assert any(m.startswith(name + "-") for m in maps), name  # generated: name-hash
    for name in re.findall(r"`(engine-\w+-headless)`", section):
        assert name in named(rendered, "Service")
    for name in re.findall(r"`([\w-]+)`", section):
        if name.endswith(("-egress", "-deny")):
            assert name in named(rendered, "NetworkPolicy"), name
    for name in ("model-check", "engine-models"):
        assert f"`{name}`" in section
    assert "engine-models" in named(rendered, "PersistentVolumeClaim")


def test_the_prometheus_address_is_the_one_keda_queries(rendered: list[Doc]) -> None:
    addresses = {
        t["metadata"]["serverAddress"]
        for d in rendered
        if d["kind"] == "ScaledObject"
        for t in d["spec"]["triggers"]
        if t["type"] == "prometheus"
    }
    assert len(addresses) == 1 and addresses.pop() in kubernetes_section()


def test_paths_the_readme_names_exist() -> None:
    for path in set(re.findall(r"`((?:deploy/|scripts/|tests/)[\w./-]+)`", README)):
        assert (ROOT / path.rstrip("/")).exists(), path
    for path in set(re.findall(r"`((?:k8s|prometheus|grafana|config|tools)/[\w.-]+)`", README)):
        assert (DEPLOY / path).exists(), path
    for path in set(re.findall(r"(deploy/[\w./-]+)", commands())):
        assert (ROOT / path.rstrip("/")).exists(), path
