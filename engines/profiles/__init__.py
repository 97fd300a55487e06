"""Engine profiles: which vLLM engines make up a deployment, and how each one is run.

A profile is a YAML file in this folder (or any path). ``local-cpu`` is run on this
machine by the launcher from a prepared virtualenv; the ``a100-*`` profiles describe the
production GPU engines, which run from the official vLLM image (see ``deploy/``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engines.errors import ProfileError

PORT_ENV_PREFIX = "TOLLGATE_ENGINE_PORT_"
_NAME = r"^[a-z0-9][a-z0-9.-]*$"
Name = Annotated[str, Field(pattern=_NAME, max_length=48)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(_Model):
    """Where an engine's weights come from: a locally prepared artifact or a repo/path.

    ``alternatives`` are other artifacts, in order, for a CPU whose vLLM build lacks a
    kernel the first one needs (the preparer probes the build and says which it chose).
    """

    artifact: Name | None = None
    repo: str | None = None
    alternatives: tuple[Name, ...] = ()

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.artifact is None) == (self.repo is None):
            raise ValueError("set exactly one of 'artifact' or 'repo'")
        if self.alternatives and self.artifact is None:
            raise ValueError("'alternatives' are other artifacts: set 'artifact' too")
        return self

    @property
    def choices(self) -> tuple[str, ...]:
        """The artifacts in order of preference (empty for a repo)."""
        return (self.artifact, *self.alternatives) if self.artifact else ()


class EngineSpec(_Model):
    """One vLLM OpenAI-compatible server: the model it serves and its arguments."""

    name: Name
    tier: Literal["small", "large"]
    served_model_name: Annotated[str, Field(min_length=1)]
    model: ModelSource
    host: str = "127.0.0.1"
    port: Port
    gpus: Annotated[int, Field(ge=0)] = 0
    #: The GPU model each of ``gpus`` is (``engines.plan.GPUS``), for the memory planner.
    gpu: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _args_do_not_override_launcher(self) -> EngineSpec:
        owned = {"--model", "--served-model-name", "--host", "--port"}
        clash = sorted(owned.intersection(a.split("=", 1)[0] for a in self.args))
        if clash:
            raise ValueError(f"args must not set {', '.join(clash)}: use the profile fields")
        return self

    @model_validator(mode="after")
    def _gpus_cover_tensor_parallel(self) -> EngineSpec:
        tp = self.tensor_parallel_size
        if self.gpus and tp > self.gpus:
            raise ValueError(f"--tensor-parallel-size {tp} needs {tp} gpus, got {self.gpus}")
        return self

    @property
    def tensor_parallel_size(self) -> int:
        """The ``--tensor-parallel-size`` in ``args`` (1 when absent)."""
        args = list(self.args)
        for i, arg in enumerate(args):
            if arg.startswith("--tensor-parallel-size="):
                return int(arg.split("=", 1)[1])
            if arg in ("--tensor-parallel-size", "-tp") and i + 1 < len(args):
                return int(args[i + 1])
        return 1

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def server_args(self, model: str) -> list[str]:
        """The ``vllm serve`` / api_server arguments for this engine, given its model."""
        return [
            "--model",
            model,
            "--served-model-name",
            self.served_model_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.args,
        ]


class VenvRuntime(_Model):
    """Engines run on this machine from a prepared virtualenv (vLLM's CPU build)."""

    kind: Literal["venv"]
    venv: Name


class ContainerRuntime(_Model):
    """Engines run from a container image (production GPU nodes; see deploy/)."""

    kind: Literal["container"]
    image: str


class Profile(_Model):
    """A named set of engines and the runtime they share."""

    name: Name
    description: str = ""
    runtime: Annotated[VenvRuntime | ContainerRuntime, Field(discriminator="kind")]
    engines: tuple[EngineSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        for label, values in (
            ("engine name", [e.name for e in self.engines]),
            ("served_model_name", [e.served_model_name for e in self.engines]),
            ("port", [f"{e.host}:{e.port}" for e in self.engines]),
        ):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"duplicate {label}: {', '.join(dupes)}")
        return self

    def engine(self, name: str) -> EngineSpec:
        for spec in self.engines:
            if spec.name == name:
                return spec
        known = ", ".join(e.name for e in self.engines)
        raise ProfileError(f"profile {self.name!r} has no engine {name!r} (has: {known})")

    def with_ports(self, ports: Mapping[str, int]) -> Profile:
        """A copy with some engines moved to other ports (tests use free ports)."""
        for name in ports:
            self.engine(name)
        data = self.model_dump()
        for engine in data["engines"]:
            engine["port"] = ports.get(engine["name"], engine["port"])
        try:
            return Profile.model_validate(data)
        except ValidationError as exc:
            raise ProfileError(f"invalid port override for {self.name!r}: {exc}") from exc


def profile_dir() -> Path:
    """The folder holding the bundled profile files."""
    return Path(str(resources.files(__name__)))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profile_dir().glob("*.yaml"))


def ports_from_env(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Port overrides such as ``TOLLGATE_ENGINE_PORT_SMALL=18101`` -> ``{"small": 18101}``."""
    env = os.environ if environ is None else environ
    ports: dict[str, int] = {}
    for key, value in env.items():
        if key.startswith(PORT_ENV_PREFIX) and value:
            name = key.removeprefix(PORT_ENV_PREFIX).lower().replace("_", "-")
            if not value.isdigit():
                raise ProfileError(f"{key}={value!r} is not a port number")
            ports[name] = int(value)
    return ports


def parse_port_option(text: str) -> tuple[str, int]:
    """Parse a CLI ``NAME=PORT`` option."""
    match = re.fullmatch(r"([a-z0-9-]+)=(\d{1,5})", text.strip())
    if match is None:
        raise ProfileError(f"expected NAME=PORT, got {text!r}")
    return match.group(1), int(match.group(2))


def load_profile(
    name_or_path: str | Path,
    *,
    ports: Mapping[str, int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Profile:
    """Load and validate a profile by bundled name or file path.

    Port overrides apply in order: ``TOLLGATE_ENGINE_PORT_<NAME>`` from ``environ``
    (the process environment when None), then ``ports``.
    """
    path = _locate(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {path} must be a mapping, got {type(raw).__name__}")
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(f"invalid profile {path}:\n{exc}") from exc
    overrides = {
        k: v for k, v in ports_from_env(environ).items() if k in {e.name for e in profile.engines}
    }
    overrides.update(ports or {})
    return profile.with_ports(overrides) if overrides else profile


def _locate(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.parent != Path("."):
        if candidate.is_file():
            return candidate
        raise ProfileError(f"profile file not found: {candidate}")
    bundled = profile_dir() / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    known = ", ".join(available_profiles()) or "none"
    raise ProfileError(f"unknown profile {str(name_or_path)!r} (bundled: {known})")
