"""deploy/docker-compose.yml: valid against the compose-spec schema, and the gateway's
command is what the image's ENTRYPOINT expects (not `tollgate tollgate serve`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
import yaml

from gateway.cli import app as cli_app
from tests.deploy.conftest import DEPLOY, ROOT, DeployTools, run_tool
from tests.deploy.test_dockerfile import stage_instruction

COMPOSE = DEPLOY / "docker-compose.yml"
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def parses(argv: list[str]) -> Any:
    """Parse ``tollgate ARGV`` with the real CLI, without running it: the subcommand's
    click context, or None when ARGV names no subcommand (Typer carries its own click,
    so this goes through the group rather than click's classes)."""
    group: Any = typer.main.get_command(cli_app)
    ctx = group.make_context("tollgate", list(argv))
    command = group.get_command(ctx, argv[0])
    return None if command is None else command.make_context(argv[0], argv[1:], parent=ctx)


def test_compose_passes_the_compose_spec_schema(deploy_tools: DeployTools) -> None:
    run_tool([deploy_tools["check-jsonschema"], "--schemafile", str(SCHEMA), str(COMPOSE)])


def test_the_schema_check_catches_a_misplaced_key(
    deploy_tools: DeployTools, tmp_path: Path
) -> None:
    bad = compose()
    bad["services"]["gateway"]["commands"] = bad["services"]["gateway"].pop("command")
    path = tmp_path / "compose.yml"
    path.write_text(yaml.safe_dump(bad))
    proc = run_tool(
        [deploy_tools["check-jsonschema"], "--schemafile", str(SCHEMA), str(path)], check=False
    )
    assert proc.returncode != 0


def test_gateway_command_follows_the_images_entrypoint() -> None:
    entrypoint = stage_instruction("gateway", "ENTRYPOINT")
    command = compose()["services"]["gateway"]["command"]
    assert entrypoint == ["tollgate"]
    assert command[0] != "tollgate", "command repeats the ENTRYPOINT: `tollgate tollgate ...`"
    ctx = parses(command)
    assert ctx.command.name == "serve"
    # The config it names is the one compose mounts.
    config = Path(ctx.params["config"])
    mounts = dict(
        v.split(":")[:2][::-1] for v in compose()["services"]["gateway"]["volumes"] if ":" in v
    )
    assert (DEPLOY / mounts[str(config.parent)] / config.name).resolve().is_file()


def test_the_cli_check_rejects_the_old_command() -> None:
    assert parses(["tollgate", "serve", "--config", "/etc/tollgate/tollgate.yaml"]) is None


def test_kubernetes_gateway_args_follow_the_entrypoint_too() -> None:
    gateway = next(yaml.safe_load_all((DEPLOY / "k8s" / "gateway.yaml").read_text()))
    args = gateway["spec"]["template"]["spec"]["containers"][0]["args"]
    assert parses(args).command.name == "serve"
    assert "command" not in gateway["spec"]["template"]["spec"]["containers"][0]


def test_engines_and_redis_require_their_secrets() -> None:
    services = compose()["services"]
    for name in ("engine-small", "engine-large"):
        env = services[name]["environment"]
        assert env["VLLM_API_KEY"].startswith("${TOLLGATE_ENGINE_API_KEY:?")
        assert "/health" in " ".join(services[name]["healthcheck"]["test"])
    gateway = services["gateway"]["environment"]
    assert gateway["TOLLGATE_ENGINE_API_KEY"].startswith("${TOLLGATE_ENGINE_API_KEY:?")
    assert gateway["TOLLGATE_QUOTAS__REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    redis = services["redis"]
    assert "--requirepass" in redis["command"]
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    # /admin is published on the loopback only.
    assert "127.0.0.1:8001:8001" in services["gateway"]["ports"]


def test_every_required_variable_is_in_the_readme() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    readme = (DEPLOY / "README.md").read_text()
    block = readme.split("## Docker Compose", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert required <= set(re.findall(r"(\w+)=", block)), required
    assert (ROOT / "Dockerfile.gpu").is_file()


def test_compose_lets_the_gateway_drain() -> None:
    """compose's default stop grace is 10 s: the gateway's SIGTERM sequence needs more."""
    from tests.deploy.test_kubernetes import _shutdown_seconds

    grace = compose()["services"]["gateway"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) >= _shutdown_seconds() + 5
