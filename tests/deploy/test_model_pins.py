"""One model per tier, pinned once: deploy/models.env (what Job model-fetch downloads),
the A100 profiles' ``--model``/``--revision`` (what the engines serve), and the
production gateway config's ``model``, ``max_model_len`` and ``tokenizer`` (a snapshot on
the models volume, which the gateway mounts read-only in k8s and compose) all agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from engines.plan import arg
from engines.profiles import EngineSpec, load_profile
from tests.deploy.conftest import DEPLOY
from tests.deploy.test_model_fetch import load as load_model_fetch

TIERS = ("small", "large")
#: Where the gateway finds the engines' Hugging Face cache (HF_HOME of the engines and of
#: Job model-fetch in k8s; the hf-cache volume in compose).
HF_HOME = Path("/models/hf")


def models_env() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "models.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            pins[key.strip()] = value.strip()
    return pins


def profile_engine(tier: str) -> EngineSpec:
    return load_profile(f"a100-{tier}", environ={}).engine(tier)


def gateway_engine(tier: str) -> dict[str, Any]:
    entries = yaml.safe_load((DEPLOY / "config" / "tollgate.yaml").read_text())["engines"]
    [entry] = [e for e in entries if e["tier"] == tier]
    return dict(entry)


@pytest.mark.parametrize("tier", TIERS)
def test_models_env_pins_what_the_profile_serves(tier: str) -> None:
    pins, engine = models_env(), profile_engine(tier)
    assert pins[f"{tier.upper()}_REPO"] == engine.model.repo
    assert pins[f"{tier.upper()}_REVISION"] == arg(engine.args, "--revision")


@pytest.mark.parametrize("tier", TIERS)
def test_the_gateway_names_and_counts_with_the_served_model(tier: str) -> None:
    pins, engine, entry = models_env(), profile_engine(tier), gateway_engine(tier)
    assert entry["model"] == engine.served_model_name
    assert entry["max_model_len"] == int(str(arg(engine.args, "--max-model-len")))
    repo, revision = pins[f"{tier.upper()}_REPO"], pins[f"{tier.upper()}_REVISION"]
    snapshot = load_model_fetch().repo_dir(HF_HOME, repo) / "snapshots" / revision
    assert entry["tokenizer"] == str(snapshot)


def test_the_kubernetes_gateway_mounts_the_models_volume(rendered: list[dict[str, Any]]) -> None:
    [gateway] = [
        d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway"
    ]
    spec = gateway["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    models = mounts["/models"]
    assert models["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    assert claim == {"claimName": "engine-models", "readOnly": True}
    # ...the volume the engines load from, with the same HF_HOME under it.
    for tier in TIERS:
        [engine] = [
            d
            for d in rendered
            if d["kind"] == "Deployment" and d["metadata"]["name"] == f"engine-{tier}"
        ]
        container = engine["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HF_HOME"] == str(HF_HOME)


def test_the_compose_gateway_mounts_the_engines_cache() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    gateway = services["gateway"]["volumes"]
    assert f"hf-cache:{HF_HOME}:ro" in gateway
    for tier in TIERS:
        engine = services[f"engine-{tier}"]
        # vLLM's image: HF_HOME defaults to /root/.cache/huggingface (hub/ under it).
        assert "HF_HOME" not in engine["environment"]
        assert "hf-cache:/root/.cache/huggingface" in engine["volumes"]
        # The gateway reads the tokenizers only once the engines have fetched them.
        assert services["gateway"]["depends_on"][f"engine-{tier}"]["condition"] == (
            "service_healthy"
        )
