"""Profiles: loading, validation, port overrides, and deploy/ staying in step with them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from engines.errors import ProfileError
from engines.profiles import (
    EngineSpec,
    Profile,
    available_profiles,
    load_profile,
    parse_port_option,
    ports_from_env,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def engine_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "small",
        "tier": "small",
        "served_model_name": "m-small",
        "model": {"artifact": "some-model"},
        "port": 9001,
    }
    return {**data, **overrides}


def profile_data(*engines: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "p",
        "runtime": {"kind": "venv", "venv": "v-1.0"},
        "engines": list(engines) or [engine_data()],
    }


# -- bundled profiles --------------------------------------------------------------------


def test_every_bundled_profile_loads() -> None:
    names = available_profiles()
    assert {"local-cpu", "a100-small", "a100-large"} <= set(names)
    for name in names:
        assert load_profile(name, environ={}).name == name


def test_local_cpu_is_the_verified_smollm2_pair() -> None:
    profile = load_profile("local-cpu", environ={})
    small, large = profile.engine("small"), profile.engine("large")
    assert (small.tier, small.served_model_name, small.port) == ("small", "smollm2-135m-awq", 8101)
    assert (large.tier, large.served_model_name, large.port) == ("large", "smollm2-135m", 8102)
    assert small.model.artifact == "smollm2-135m-instruct-awq-w4a16-g64"
    assert large.model.artifact == "smollm2-135m-instruct-bf16"
    for engine in (small, large):
        assert engine.args[:5] == (
            "--enforce-eager",
            "--max-model-len",
            "2048",
            "--dtype",
            "bfloat16",
        )
        assert engine.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        assert engine.host == "127.0.0.1"
    # One core each, never the same one.
    binds = {small.env["VLLM_CPU_OMP_THREADS_BIND"], large.env["VLLM_CPU_OMP_THREADS_BIND"]}
    assert binds == {"0", "1"}


def test_a100_profiles_describe_the_production_engines() -> None:
    small = load_profile("a100-small", environ={}).engine("small")
    large = load_profile("a100-large", environ={}).engine("large")
    assert "AWQ" in str(small.model.repo) and "awq_marlin" in small.args
    assert small.gpus == 1 and small.tensor_parallel_size == 1
    assert large.gpus == 2 and large.tensor_parallel_size == 2
    for engine in (small, large):
        assert "--enable-prefix-caching" in engine.args
        assert "--gpu-memory-utilization" in engine.args
        assert "--max-num-seqs" in engine.args


def test_server_args_put_the_launcher_fields_first() -> None:
    engine = load_profile("local-cpu", environ={}).engine("large")
    args = engine.server_args("/models/bf16")
    assert args[:8] == [
        "--model",
        "/models/bf16",
        "--served-model-name",
        "smollm2-135m",
        "--host",
        "127.0.0.1",
        "--port",
        "8102",
    ]
    assert engine.base_url == "http://127.0.0.1:8102/v1"


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        (engine_data(model={}), "exactly one of 'artifact' or 'repo'"),
        (engine_data(model={"artifact": "a", "repo": "b/c"}), "exactly one"),
        (engine_data(tier="medium"), "tier"),
        (engine_data(port=70000), "port"),
        (engine_data(args=["--port", "1"]), "must not set --port"),
        (engine_data(args=["--model=x"]), "must not set --model"),
        (engine_data(gpus=1, args=["--tensor-parallel-size", "2"]), "needs 2 gpus"),
        (engine_data(name="Small Engine"), "name"),
        (engine_data(surprise=True), "surprise"),
    ],
)
def test_invalid_engines_are_rejected_with_the_reason(
    engine: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(profile_data(engine)))
    with pytest.raises(ProfileError, match=message):
        load_profile(path, environ={})


def test_duplicate_ports_and_names_are_rejected() -> None:
    twin = engine_data(name="large", tier="large", served_model_name="m-large")
    with pytest.raises(ValueError, match="duplicate port"):
        Profile.model_validate(profile_data(engine_data(), twin))
    with pytest.raises(ValueError, match="duplicate engine name"):
        Profile.model_validate(profile_data(engine_data(), engine_data(port=9002)))


def test_a_profile_needs_engines_and_a_known_runtime(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="engines"):
        Profile.model_validate({**profile_data(), "engines": []})
    with pytest.raises(ValueError, match="kind"):
        Profile.model_validate({**profile_data(), "runtime": {"kind": "bare-metal"}})


def test_unreadable_or_unknown_profiles_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"unknown profile 'nope' \(bundled: .*local-cpu"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ProfileError, match="must be a mapping"):
        load_profile(listy)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(broken)


# -- ports -------------------------------------------------------------------------------


def test_ports_come_from_env_then_arguments() -> None:
    env = {"TOLLGATE_ENGINE_PORT_SMALL": "18101", "TOLLGATE_ENGINE_PORT_LARGE": "18102"}
    profile = load_profile("local-cpu", environ=env, ports={"large": 28102})
    assert profile.engine("small").port == 18101
    assert profile.engine("large").port == 28102
    assert load_profile("local-cpu", environ={}).engine("small").port == 8101


def test_env_ports_for_engines_a_profile_lacks_are_ignored() -> None:
    profile = load_profile("local-cpu", environ={"TOLLGATE_ENGINE_PORT_MEDIUM": "1234"})
    assert [e.port for e in profile.engines] == [8101, 8102]


def test_bad_port_overrides_are_rejected() -> None:
    with pytest.raises(ProfileError, match="not a port number"):
        ports_from_env({"TOLLGATE_ENGINE_PORT_SMALL": "http"})
    profile = load_profile("local-cpu", environ={})
    with pytest.raises(ProfileError, match="invalid port override"):
        profile.with_ports({"small": 70000})
    with pytest.raises(ProfileError, match="invalid port override"):
        profile.with_ports({"small": 8102})  # collides with large
    with pytest.raises(ProfileError, match="no engine 'medium'"):
        profile.with_ports({"medium": 9000})


def test_parse_port_option() -> None:
    assert parse_port_option("small=18101") == ("small", 18101)
    for bad in ("small", "small=", "=80", "small=port"):
        with pytest.raises(ProfileError, match="NAME=PORT"):
            parse_port_option(bad)


# -- deploy/ mirrors the a100 profiles ---------------------------------------------------


def _profile_argv(profile_name: str) -> tuple[EngineSpec, list[str]]:
    engine = load_profile(profile_name, environ={}).engines[0]
    return engine, engine.server_args(str(engine.model.repo))


def _k8s_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


@pytest.mark.parametrize("profile_name", ["a100-small", "a100-large"])
def test_compose_engines_run_exactly_the_profile(profile_name: str) -> None:
    engine, argv = _profile_argv(profile_name)
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    service = compose["services"][f"engine-{engine.tier}"]
    image = load_profile(profile_name, environ={}).runtime
    assert service["image"] == getattr(image, "image", None)
    assert service["command"] == argv
    devices = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert len(devices["device_ids"]) == engine.gpus


@pytest.mark.parametrize("profile_name", ["a100-small", "a100-large"])
def test_k8s_engines_run_exactly_the_profile(profile_name: str) -> None:
    engine, argv = _profile_argv(profile_name)
    docs = _k8s_docs(f"engine-{engine.tier}.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == argv
    assert container["resources"]["limits"]["nvidia.com/gpu"] == engine.gpus
    assert container["resources"]["requests"]["nvidia.com/gpu"] == engine.gpus
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == engine.port
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == selector
    assert service["spec"]["selector"] == selector


def test_gateway_config_points_at_the_engines_and_their_models() -> None:
    config = yaml.safe_load((DEPLOY / "config" / "tollgate.yaml").read_text())
    engines = {e["tier"]: e for e in config["engines"]}
    prices = yaml.safe_load((DEPLOY / "config" / "prices.yaml").read_text())
    priced = {p["model"] for p in prices["prices"]}
    for profile_name in ("a100-small", "a100-large"):
        engine = load_profile(profile_name, environ={}).engines[0]
        entry = engines[engine.tier]
        assert entry["model"] == engine.served_model_name
        # The tier's headless Service: the gateway discovers each pod as a replica.
        assert entry["url"] == f"http://engine-{engine.tier}-headless:{engine.port}"
        assert entry["discover"] == "dns"
        services = {
            d["metadata"]["name"]: d
            for d in _k8s_docs(f"engine-{engine.tier}.yaml")
            if d["kind"] == "Service"
        }
        headless = services[f"engine-{engine.tier}-headless"]["spec"]
        assert headless["clusterIP"] == "None"
        assert headless["ports"][0]["port"] == engine.port
        assert engine.served_model_name in priced
    assert config["quotas"]["backend"] == "redis"


def test_gateway_deployment_scales_with_keda() -> None:
    docs = {d["kind"]: d for d in _k8s_docs("gateway.yaml")}
    assert docs["Deployment"]["spec"]["replicas"] >= 2
    scaler = docs["ScaledObject"]["spec"]  # KEDA creates and owns the HPA
    assert scaler["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert scaler["minReplicaCount"] <= scaler["maxReplicaCount"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {f"k8s/{p.name}" for p in (DEPLOY / "k8s").glob("*.yaml")}
    for generator in kustomization["configMapGenerator"]:
        for file in generator.get("files", []) + generator.get("envs", []):
            assert (DEPLOY / file).is_file(), file


def test_prometheus_scrapes_the_gateway_and_both_engines() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == {"gateway:8000", "engine-small:8000", "engine-large:8000"}


@pytest.mark.parametrize("profile_name", ["a100-small", "a100-large"])
def test_engine_image_entrypoint_builds_the_same_argv(profile_name: str) -> None:
    spec = importlib.util.spec_from_file_location("entry", DEPLOY / "engine-entrypoint.py")
    assert spec is not None and spec.loader is not None
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    engine, argv = _profile_argv(profile_name)
    raw = yaml.safe_load((ROOT / "engines" / "profiles" / f"{profile_name}.yaml").read_text())
    built, env = entry.engine_argv(raw, engine.name)
    assert built == argv
    assert env == engine.env
    with pytest.raises(SystemExit, match="no engine"):
        entry.engine_argv(raw, "medium")
