"""deploy/ rendered by kustomize: valid against Kubernetes' schemas, locked down, and
wired together (Secrets, Services, scaling, model storage) as deploy/README.md says."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.quotas.link import RedisTarget
from tests.deploy.conftest import DEPLOY, DeployTools, run_tool

#: The Kubernetes version the manifests are validated for (kubernetes-validate bundles
#: schemas for 1.25 to 1.37); the namespace's Pod Security version follows it.
K8S_VERSION = "1.31.0"
SCHEMAS = Path(__file__).parent / "schemas"
#: Custom resources and the vendored schema each is validated against.
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda-scaledobject-v1alpha1.json"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")

Doc = dict[str, Any]


def by_kind(rendered: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in rendered if d["kind"] == kind}


def pod_specs(rendered: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in rendered:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_ref(env: Doc) -> tuple[str, str]:
    ref = env["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def deployment(rendered: list[Doc], name: str) -> Doc:
    return by_kind(rendered, "Deployment")[name]


def main_container(rendered: list[Doc], name: str) -> Doc:
    container: Doc = deployment(rendered, name)["spec"]["template"]["spec"]["containers"][0]
    return container


# -- schemas ---------------------------------------------------------------------------


def test_manifests_pass_the_kubernetes_schemas(
    deploy_tools: DeployTools, rendered_file: Path
) -> None:
    out = run_tool(
        [deploy_tools["kubernetes-validate"], "-k", K8S_VERSION, "--strict", str(rendered_file)]
    )
    # kubernetes-validate only warns on a kind it has no schema for: those are the custom
    # resources, validated below against their vendored CRD schemas.
    unchecked = {
        m.group(1, 2)
        for m in re.finditer(r"kind (\S+) with api version (\S+)", out.stdout + out.stderr)
    }
    assert {(api, kind) for kind, api in unchecked} <= set(CRD_SCHEMAS)


def test_custom_resources_pass_their_crd_schemas(
    deploy_tools: DeployTools, rendered: list[Doc], tmp_path: Path
) -> None:
    group = [d["apiVersion"].rsplit("/", 1)[0] if "/" in d["apiVersion"] else "" for d in rendered]
    custom = [
        d for d, g in zip(rendered, group, strict=True) if "." in g and not g.endswith("k8s.io")
    ]
    assert {(d["apiVersion"], d["kind"]) for d in custom} <= set(CRD_SCHEMAS)
    for key, schema in CRD_SCHEMAS.items():
        docs = [d for d in custom if (d["apiVersion"], d["kind"]) == key]
        files = []
        for i, doc in enumerate(docs):
            files.append(tmp_path / f"{key[1]}-{i}.json")
            files[-1].write_text(json.dumps(doc))
        run_tool([deploy_tools["check-jsonschema"], "--schemafile", str(schema), *map(str, files)])


def test_the_crd_schema_rejects_a_broken_scaled_object(
    deploy_tools: DeployTools, rendered: list[Doc], tmp_path: Path
) -> None:
    doc = json.loads(json.dumps(by_kind(rendered, "ScaledObject")["engine-small"]))
    doc["spec"]["minReplicas"] = 2  # KEDA spells it minReplicaCount
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    schema = str(CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])
    proc = run_tool(
        [deploy_tools["check-jsonschema"], "--schemafile", schema, str(bad)], check=False
    )
    assert proc.returncode != 0


# -- locked down -----------------------------------------------------------------------


def test_every_image_is_pinned_by_digest_through_the_images_list(rendered: list[Doc]) -> None:
    listed = {
        i["name"] for i in yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["images"]
    }
    for where, spec in pod_specs(rendered):
        for c in containers(spec):
            assert DIGEST.search(c["image"]), f"{where}/{c['name']}: {c['image']} not pinned"
            assert c["image"].split("@")[0].rsplit(":", 1)[0] in listed


def test_placeholder_digests_are_marked() -> None:
    text = (DEPLOY / "kustomization.yaml").read_text()
    if "sha256:" + "0" * 64 in text:
        assert "PLACEHOLDER" in text


def test_every_pod_is_non_root_read_only_and_without_capabilities(rendered: list[Doc]) -> None:
    for where, spec in pod_specs(rendered):
        pod = spec["securityContext"]
        assert spec["automountServiceAccountToken"] is False, where  # none calls the API
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
    namespace = by_kind(rendered, "Namespace")["tollgate"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert (
        labels["pod-security.kubernetes.io/enforce-version"] == "v" + K8S_VERSION.rsplit(".", 1)[0]
    )


def test_engines_write_only_to_their_cache_volumes(rendered: list[Doc]) -> None:
    for name in ("engine-small", "engine-large"):
        c = main_container(rendered, name)
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert {"/models", "/cache", "/tmp", "/dev/shm"} <= set(mounts)
        assert mounts["/models"]["readOnly"] is True
        env = env_of(c)
        for var in ("HOME", "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR"):
            assert env[var]["value"].startswith("/cache/"), var


def test_engines_require_the_api_key_the_gateway_sends(rendered: list[Doc]) -> None:
    gateway_env = env_of(main_container(rendered, "gateway"))
    key = secret_ref(gateway_env["TOLLGATE_ENGINE_API_KEY"])
    assert key == ("engine-api-key", "api-key")
    for name in ("engine-small", "engine-large"):
        c = main_container(rendered, name)
        assert secret_ref(env_of(c)["VLLM_API_KEY"]) == key
        # /v1/* needs the key now: the probes use the open /health.
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["path"] == "/health", (name, probe)


def test_redis_requires_the_password_the_gateway_url_carries(rendered: list[Doc]) -> None:
    redis = main_container(rendered, "redis")
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert secret_ref(env_of(redis)["REDIS_PASSWORD"]) == ("redis-auth", "password")
    assert secret_ref(env_of(redis)["REDISCLI_AUTH"]) == ("redis-auth", "password")

    gateway = main_container(rendered, "gateway")
    names = [e["name"] for e in gateway["env"]]
    env = env_of(gateway)
    assert secret_ref(env["REDIS_PASSWORD"]) == ("redis-auth", "password")
    url = env["TOLLGATE_QUOTAS__REDIS_URL"]["value"]
    # Kubernetes expands $(VAR) only from variables defined before it.
    assert names.index("REDIS_PASSWORD") < names.index("TOLLGATE_QUOTAS__REDIS_URL")
    secret = "0f3a9c" * 8  # what `openssl rand -hex 32` gives, as the README says
    target = RedisTarget.parse(url.replace("$(REDIS_PASSWORD)", secret))
    assert (target.host, target.port, target.password) == ("redis", 6379, secret)


def test_the_admin_listener_is_not_on_the_client_port(rendered: list[Doc]) -> None:
    services = by_kind(rendered, "Service")
    assert [p["targetPort"] for p in services["gateway"]["spec"]["ports"]] == ["http"]
    assert [p["targetPort"] for p in services["gateway-admin"]["spec"]["ports"]] == ["admin"]
    ports = {p["name"]: p["containerPort"] for p in main_container(rendered, "gateway")["ports"]}
    assert ports["http"] != ports["admin"]
    config = yaml.safe_load((DEPLOY / "config" / "tollgate.yaml").read_text())
    assert (config["server"]["port"], config["server"]["admin_port"]) == (
        ports["http"],
        ports["admin"],
    )


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _pod_labels(rendered: list[Doc], name: str) -> dict[str, str]:
    labels: dict[str, str] = deployment(rendered, name)["spec"]["template"]["metadata"]["labels"]
    return labels


def _ingress_peers(rendered: list[Doc], target: str, port: int) -> list[Doc | None]:
    """The `from` peers allowed to reach ``port`` of deployment ``target`` (None: anyone)."""
    labels = _pod_labels(rendered, target)
    peers: list[Doc | None] = []
    for policy in by_kind(rendered, "NetworkPolicy").values():
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"] or not _selects(spec["podSelector"], labels):
            continue
        for rule in spec.get("ingress", []):
            if any(p.get("port") == port for p in rule.get("ports", [])) or not rule.get("ports"):
                peers.extend(rule.get("from") or [None])
    return peers


def test_network_policies_let_only_the_gateway_reach_engines_and_redis(
    rendered: list[Doc],
) -> None:
    policies = by_kind(rendered, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    gateway_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}
    monitoring = {"namespaceSelector": {"matchLabels": {"tollgate.io/monitoring": "true"}}}
    for engine in ("engine-small", "engine-large"):
        assert _ingress_peers(rendered, engine, 8000) == [gateway_pods, monitoring]
    assert _ingress_peers(rendered, "redis", 6379) == [gateway_pods]
    # Clients reach the API from anywhere; /admin only from labelled ops namespaces.
    assert _ingress_peers(rendered, "gateway", 8000) == [None]
    ops = {"namespaceSelector": {"matchLabels": {"tollgate.io/ops": "true"}}}
    assert _ingress_peers(rendered, "gateway", 8001) == [ops]
    # Only the gateway may open connections to PostgreSQL.
    postgres = [
        p
        for p in policies.values()
        if any(
            port.get("port") == 5432
            for rule in p["spec"].get("egress", [])
            for port in rule.get("ports", [])
        )
    ]
    assert [p["spec"]["podSelector"] for p in postgres] == [
        {"matchLabels": {"app.kubernetes.io/component": "gateway"}}
    ]


# -- engines that scale and survive -----------------------------------------------------


@pytest.mark.parametrize("tier", ["small", "large"])
def test_engine_replicas_are_discoverable_through_a_headless_service(
    rendered: list[Doc], tier: str
) -> None:
    service = by_kind(rendered, "Service")[f"engine-{tier}-headless"]["spec"]
    assert service["clusterIP"] == "None"
    assert service["selector"] == {
        k: v
        for k, v in _pod_labels(rendered, f"engine-{tier}").items()
        if k.startswith(("app.kubernetes.io/", "tollgate.io/"))
    }
    assert [p["port"] for p in service["ports"]] == [8000]


@pytest.mark.parametrize("tier", ["small", "large"])
def test_engines_survive_drains_and_node_loss(rendered: list[Doc], tier: str) -> None:
    name = f"engine-{tier}"
    pdb = by_kind(rendered, "PodDisruptionBudget")[name]["spec"]
    assert _selects(pdb["selector"], _pod_labels(rendered, name))
    assert pdb["maxUnavailable"] == 1
    spec = deployment(rendered, name)["spec"]["template"]["spec"]
    term = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(term[0]["podAffinityTerm"]["labelSelector"], _pod_labels(rendered, name))
    startup = spec["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # model load


@pytest.mark.parametrize(
    ("target", "metric"),
    [
        ("engine-small", "vllm:num_requests_waiting"),
        ("engine-large", "vllm:num_requests_waiting"),
        ("gateway", "tollgate_in_flight_requests"),
    ],
)
def test_autoscalers_follow_the_load(rendered: list[Doc], target: str, metric: str) -> None:
    scaled = by_kind(rendered, "ScaledObject")[target]["spec"]
    assert scaled["scaleTargetRef"]["name"] in by_kind(rendered, "Deployment")
    queries = [t["metadata"]["query"] for t in scaled["triggers"] if t["type"] == "prometheus"]
    assert len(queries) == 1 and metric in queries[0]
    # KEDA owns the HPA: a second one on the same Deployment would fight it.
    assert target not in by_kind(rendered, "HorizontalPodAutoscaler")


def _engine_model_arg(rendered: list[Doc], tier: str) -> str:
    args = main_container(rendered, f"engine-{tier}")["args"]
    return str(args[args.index("--model") + 1])


@pytest.mark.parametrize("tier", ["small", "large"])
def test_engines_load_a_pinned_revision_from_the_models_volume(
    rendered: list[Doc], tier: str
) -> None:
    pins = by_kind(rendered, "ConfigMap")
    models = next(v for k, v in pins.items() if k.startswith("engine-models"))["data"]
    assert models[f"{tier.upper()}_REPO"] == _engine_model_arg(rendered, tier)
    assert re.fullmatch(r"[0-9a-f]{40}", models[f"{tier.upper()}_REVISION"])

    spec = deployment(rendered, f"engine-{tier}")["spec"]["template"]["spec"]
    env = env_of(spec["containers"][0])
    assert env["HF_HUB_OFFLINE"]["value"] == "1" and env["HF_HOME"]["value"] == "/models/hf"
    assert "HF_TOKEN" not in env  # the engine never downloads
    check = spec["initContainers"][0]
    assert check["command"][-2:] == ["check", tier]
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in spec["volumes"]}
    assert claims["models"] == {"claimName": "engine-models", "readOnly": True}

    job = by_kind(rendered, "Job")["model-fetch"]["spec"]["template"]["spec"]
    assert tier in job["containers"][0]["command"]
    pvc = by_kind(rendered, "PersistentVolumeClaim")["engine-models"]["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"]


def test_configmaps_the_pods_mount_exist(rendered: list[Doc]) -> None:
    # kustomize renames generated ConfigMaps (name-hash) and the references with them.
    maps = set(by_kind(rendered, "ConfigMap"))
    for where, spec in pod_specs(rendered):
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps, where
        for c in containers(spec):
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps, where


def test_the_images_list_keeps_the_tags_the_manifests_name() -> None:
    """A digest is pinned for a tag: the list's tag must be the one the manifests (and the
    engine profiles) name, or the digest would silently pin another version."""
    named = {
        c["image"]
        for path in (DEPLOY / "k8s").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] in ("Deployment", "Job")
        for c in containers(doc["spec"]["template"]["spec"])
    }
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["images"]
    assert named == {f"{i['name']}:{i['newTag']}" for i in listed}


def _shutdown_seconds() -> float:
    """What the production gateway takes after SIGTERM at most: unready, drain, flush."""
    config = yaml.safe_load((DEPLOY / "config" / "tollgate.yaml").read_text())
    server, ledger = config["server"], config.get("ledger", {})
    return float(
        server.get("unready_seconds", 0)
        + server.get("drain_seconds", 30)
        + ledger.get("shutdown_timeout_s", 10)
    )


def test_the_gateway_pod_outlives_its_sigterm_sequence(rendered: list[Doc]) -> None:
    """server.unready_seconds does what a preStop sleep would (readiness 503, serving
    on): both would add up, so there is none, and the grace period covers unready +
    drain + ledger flush with a margin."""
    spec = deployment(rendered, "gateway")["spec"]["template"]["spec"]
    assert "lifecycle" not in spec["containers"][0]
    assert spec["terminationGracePeriodSeconds"] >= _shutdown_seconds() + 5
    config = yaml.safe_load((DEPLOY / "config" / "tollgate.yaml").read_text())
    assert config["server"]["unready_seconds"] >= 5  # the Service's endpoints catch up
