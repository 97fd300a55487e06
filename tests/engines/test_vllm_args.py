"""Every shipped engine argv is one vLLM 0.32 accepts, by vLLM's own argument parser.

The argvs come from the bundled profiles (through the launcher's argv builder), the
compose file's engine commands, the k8s engine Deployments and the GPU check's scaled
engines. They are all checked in
one run of the engine venv's interpreter (importing vLLM takes ~10 s), together with
broken variants that must fail, so a checker that accepts everything cannot pass.

The engine venv is built by ``python -m engines prepare``, which ``make test`` runs
before pytest: a missing venv fails here with that instruction rather than skipping.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from engines.cli import app
from engines.errors import PrepareError
from engines.gpucheck_engines import check_profile
from engines.profiles import available_profiles, load_profile
from engines.vllm_args import check_argvs, engine_python, profile_argvs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

SMALL = ["--model", "/models/m", "--served-model-name", "m", "--port", "8000"]
#: Broken variants, each with the words vLLM's complaint must contain.
BROKEN: dict[str, tuple[list[str], str]] = {
    "tool parser typo": (
        [*SMALL, "--enable-auto-tool-choice", "--tool-call-parser", "hermes2"],
        "invalid tool call parser: hermes2",
    ),
    "auto tools without a parser": ([*SMALL, "--enable-auto-tool-choice"], "requires"),
    "quantization typo": ([*SMALL, "--quantization", "awq-marlin"], "awq-marlin"),
    # (argparse takes unambiguous prefixes: "--tensor-parallel 2" is accepted.)
    "unknown flag": ([*SMALL, "--tensor-paralel-size", "2"], "unrecognized arguments"),
    "bad choice": ([*SMALL, "--dtype", "bf16"], "invalid choice"),
    "bad number": ([*SMALL, "--gpu-memory-utilization", "high"], "invalid"),
}


def _compose_argvs() -> dict[str, list[str]]:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services: dict[str, Any] = compose["services"]
    return {
        f"compose/{name}": [str(a) for a in service["command"]]
        for name, service in services.items()
        if name.startswith("engine-")
    }


def _k8s_argvs() -> dict[str, list[str]]:
    argvs: dict[str, list[str]] = {}
    for path in sorted((DEPLOY / "k8s").glob("engine-*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in {"Deployment", "StatefulSet"}:
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    argvs[f"k8s/{path.stem}/{container['name']}"] = [
                        str(a) for a in container["args"]
                    ]
    return argvs


def _gpu_check_argvs() -> dict[str, list[str]]:
    argvs: dict[str, list[str]] = {}
    for gpus in (1, 2):
        for name, argv in profile_argvs(check_profile(gpus)).items():
            argvs[f"{name}-{gpus}gpu"] = argv
    return argvs


def shipped_argvs() -> dict[str, list[str]]:
    argvs: dict[str, list[str]] = {}
    for name in available_profiles():
        argvs.update(profile_argvs(load_profile(name, environ={})))
    return {**argvs, **_compose_argvs(), **_k8s_argvs(), **_gpu_check_argvs()}


@pytest.fixture(scope="module")
def verdicts() -> dict[str, str | None]:
    python = engine_python()
    if not python.exists():
        pytest.fail(
            f"the engine venv ({python}) is missing: run `python -m engines prepare` "
            "(make test does) so vLLM's own parser can check the engine arguments"
        )
    broken = {f"broken/{name}": argv for name, (argv, _) in BROKEN.items()}
    return check_argvs({**shipped_argvs(), **broken}, python=python)


def test_the_check_covers_every_profile_and_deploy_engine() -> None:
    names = set(shipped_argvs())
    assert {"local-cpu/small", "local-cpu/large", "a100-small/small", "a100-large/large"} <= names
    assert {"compose/engine-small", "compose/engine-large"} <= names
    assert {"k8s/engine-small/vllm", "k8s/engine-large/vllm"} <= names
    assert {"gpu-check/small-1gpu", "gpu-check/large-2gpu"} <= names


def test_vllm_accepts_every_shipped_engine_argv(verdicts: dict[str, str | None]) -> None:
    refused = {name: why for name, why in verdicts.items() if why and name in shipped_argvs()}
    assert refused == {}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_vllm_refuses_broken_argvs(verdicts: dict[str, str | None], case: str) -> None:
    why = verdicts[f"broken/{case}"]
    assert why is not None, f"{case} was accepted"
    assert BROKEN[case][1] in why


def test_every_engine_turns_tool_calling_on_with_a_parser() -> None:
    for name, argv in shipped_argvs().items():
        assert "--enable-auto-tool-choice" in argv, name
        assert argv[argv.index("--tool-call-parser") + 1], name


def test_a_missing_engine_venv_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="engines prepare"):
        check_argvs({"x": SMALL}, python=tmp_path / "no-venv" / "bin" / "python")


def test_an_interpreter_without_vllm_is_a_clear_error() -> None:
    with pytest.raises(PrepareError, match=r"check_vllm_args\.py failed"):
        check_argvs({"x": SMALL}, python=Path(sys.executable))


def test_cli_check_args_without_the_venv_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLGATE_CACHE", str(tmp_path))
    result = CliRunner().invoke(app, ["check-args", "a100-small"])
    assert result.exit_code == 1
    assert "engines prepare" in result.output
