"""Idempotent, cached preparation of everything a profile's engines need.

``Preparer.prepare(profile)`` makes sure the engine venv and every model artifact the
profile names exist in the cache under their current version key, building only what
is missing or stale, and returns what the launcher needs to start the engines. On a
warm cache it only reads stamps, so it takes well under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from engines.artifacts import (
    cache_lock,
    clear_staging,
    is_ready,
    publish,
    remove_stamp,
    staging_dir,
    write_stamp,
)
from engines.cache import CacheLayout
from engines.cpu import CpuInfo, KernelProbe, Kernels, engine_env
from engines.errors import PrepareError
from engines.profiles import EngineSpec, Profile
from engines.recipes import (
    ENGINE_VENVS,
    MODEL_ARTIFACTS,
    OFFLINE_ENV,
    SCRIPTS,
    TORCH_CPU,
    ModelRecipe,
    VenvRecipe,
)
from engines.runner import CommandRunner, ConsoleRunner

TORCH_INDEX_ENV = "TOLLGATE_TORCH_INDEX_URL"
Recipe = VenvRecipe | ModelRecipe
#: (engine venv, operators wanted) -> what that venv's vLLM has on this CPU.
KernelSource = Callable[[VenvRecipe, frozenset[str]], Kernels]


@dataclass(frozen=True)
class Choice:
    """The artifact an engine serves on this CPU, and why."""

    engine: str
    recipe: ModelRecipe
    reason: str


@dataclass(frozen=True)
class PreparedProfile:
    """What the launcher needs: the engine interpreter and each engine's ``--model``."""

    python: Path
    models: Mapping[str, str]
    choices: tuple[Choice, ...] = ()


class Preparer:
    """Builds a profile's artifacts into the cache, each at most once per version key."""

    def __init__(
        self,
        layout: CacheLayout,
        runner: CommandRunner,
        console: Console,
        *,
        base_python: str = sys.executable,
        torch_index_url: str | None = None,
        cpu: CpuInfo | None = None,
        kernels: KernelSource | None = None,
        background: CommandRunner | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._layout = layout
        self._runner = runner
        self._console = console
        self._base_python = base_python
        self._torch_index_url = torch_index_url
        self._environ = dict(os.environ if environ is None else environ)
        self._cpu = cpu or CpuInfo.read(environ=self._environ)
        self._kernels = kernels or self._probe_kernels
        # Builds that run beside the foreground one report with plain progress lines
        # (one console holds one live display).
        self._background = background or ConsoleRunner(console, live=False)
        self._found: dict[tuple[str, frozenset[str]], Kernels] = {}

    def plan(self, profile: Profile) -> list[Recipe]:
        """The recipes the profile needs on this CPU, dependencies first, each once.

        Choosing between an engine's artifacts asks the engine venv which kernels it
        has, so the venv must be built first when any engine has alternatives.
        """
        venv = self._engine_venv(profile)
        ordered: list[Recipe] = [venv]
        for choice in self.choose(profile):
            _add_with_dependencies(choice.recipe, ordered)
        return ordered

    def choose(self, profile: Profile) -> list[Choice]:
        """For each engine with a prepared artifact, the one this CPU's vLLM can serve."""
        venv = self._engine_venv(profile)
        return [self._choose(engine, venv) for engine in profile.engines if engine.model.choices]

    def missing(self, profile: Profile) -> list[Recipe]:
        """The planned recipes whose folder is not stamped with the current key."""
        return [r for r in self.plan(profile) if not is_ready(self.folder(r), r.key)]

    def folder(self, recipe: Recipe) -> Path:
        return recipe.folder(self._layout)

    def prepare(self, profile: Profile) -> PreparedProfile:
        venv = self._engine_venv(profile)
        started = time.monotonic()
        with cache_lock(self._layout.root):
            self._ensure_venvs(venv, profile)
            choices = self.choose(profile)
            self._console.print(f"  CPU: {escape(self._cpu.describe())}")
            for choice in choices:
                name, why = choice.recipe.name, escape(choice.reason)
                self._console.print(f"  {choice.engine}: [bold]{name}[/bold] ({why})")
            plan: list[Recipe] = [venv]
            for choice in choices:
                _add_with_dependencies(choice.recipe, plan)
            for recipe in plan[1:]:
                if not isinstance(recipe, VenvRecipe):  # the venvs are ready by now
                    self._ensure(recipe)
        chosen = {c.engine: c.recipe for c in choices}
        models = {
            e.name: (str(self.folder(chosen[e.name])) if e.name in chosen else str(e.model.repo))
            for e in profile.engines
        }
        took = time.monotonic() - started
        self._console.print(f"[green]✓[/green] profile {profile.name} prepared in {took:.1f}s")
        return PreparedProfile(
            python=venv.python(self._layout), models=models, choices=tuple(choices)
        )

    # -- choosing what each engine serves ----------------------------------------------
    def _engine_venv(self, profile: Profile) -> VenvRecipe:
        if profile.runtime.kind != "venv":
            raise PrepareError(
                f"profile {profile.name!r} runs from the container image "
                f"{profile.runtime.image}; nothing to prepare here (see deploy/)"
            )
        venv = ENGINE_VENVS.get(profile.runtime.venv)
        if venv is None:
            known = ", ".join(ENGINE_VENVS)
            raise PrepareError(f"unknown engine venv {profile.runtime.venv!r} (known: {known})")
        return venv

    def _candidates(self, engine: EngineSpec) -> list[ModelRecipe]:
        found: list[ModelRecipe] = []
        for name in engine.model.choices:
            recipe = MODEL_ARTIFACTS.get(name)
            if recipe is None:
                known = ", ".join(MODEL_ARTIFACTS)
                raise PrepareError(f"engine {engine.name!r}: unknown artifact {name!r} ({known})")
            found.append(recipe)
        return found

    def _choose(self, engine: EngineSpec, venv: VenvRecipe) -> Choice:
        candidates = self._candidates(engine)
        wanted = frozenset(op for r in candidates for op in r.kernels)
        if len(candidates) == 1 and not wanted:
            return Choice(engine.name, candidates[0], "the profile's only choice")
        kernels = self._kernels_for(venv, wanted)
        skipped: list[str] = []
        for recipe in candidates:
            missing = kernels.missing(recipe.kernels)
            if not missing:
                why = f"{recipe.summary}; vLLM loads {kernels.library} here"
                if skipped:
                    why += "; not " + "; not ".join(skipped)
                return Choice(engine.name, recipe, why)
            skipped.append(f"{recipe.name}: {kernels.library} has no {', '.join(missing)}")
        raise PrepareError(
            f"engine {engine.name!r}: no artifact can run on this CPU "
            f"({self._cpu.describe()}): " + "; ".join(skipped)
        )

    def _kernels_for(self, venv: VenvRecipe, wanted: frozenset[str]) -> Kernels:
        key = (venv.key, wanted)
        if key not in self._found:
            self._found[key] = self._kernels(venv, wanted)
        return self._found[key]

    def _probe_kernels(self, venv: VenvRecipe, wanted: frozenset[str]) -> Kernels:
        if not is_ready(self.folder(venv), venv.key):
            raise PrepareError(f"{venv.label} must be built before its kernels can be probed")
        probe = KernelProbe(
            self._layout.root / "probes", self._runner, self._log(venv), self._environ
        )
        return probe.kernels(venv.python(self._layout), venv.key, self._cpu, wanted)

    def _ensure_venvs(self, engine_venv: VenvRecipe, profile: Profile) -> None:
        """The engine venv, and beside it every venv any candidate artifact is built in."""
        others: list[VenvRecipe] = []
        for engine in profile.engines:
            for recipe in self._candidates(engine):
                for dep in _dependencies(recipe):
                    if isinstance(dep, VenvRecipe) and dep not in (engine_venv, *others):
                        others.append(dep)
        missing = [v for v in others if not is_ready(self.folder(v), v.key)]
        if not missing or is_ready(self.folder(engine_venv), engine_venv.key):
            for venv in (engine_venv, *missing):
                self._ensure(venv)
            return
        # Installing is mostly unpacking wheels: two at once use both cores.
        with ThreadPoolExecutor(max_workers=len(missing)) as pool:
            futures = [pool.submit(self._ensure, v, self._background) for v in missing]
            try:
                self._ensure(engine_venv)
            finally:
                for future in futures:
                    future.result()

    def _ensure(self, recipe: Recipe, runner: CommandRunner | None = None) -> None:
        folder = self.folder(recipe)
        if is_ready(folder, recipe.key):
            self._console.print(f"[green]✓[/green] {recipe.label} [dim](cached: {folder})[/dim]")
            return
        self._console.print(f"[cyan]→[/cyan] building {recipe.label} [dim]→ {folder}[/dim]")
        started = time.monotonic()
        run = runner or self._runner
        if isinstance(recipe, VenvRecipe):
            self._ensure_venv(recipe, run)
        else:
            self._build_model(recipe)
        took = time.monotonic() - started
        self._console.print(f"[green]✓[/green] {recipe.label} ready in {took:.0f}s")

    def _ensure_venv(self, recipe: VenvRecipe, runner: CommandRunner) -> None:
        folder = self.folder(recipe)
        if folder.exists():
            # Unstamped or stamped with an old key: adopt it if it verifies as exactly
            # what the recipe builds, else start from scratch (pip over a half-written
            # site-packages is not trustworthy).
            remove_stamp(folder)
            python = folder / "bin" / "python"
            if python.exists() and self._verify_venv(recipe, runner, quiet=True):
                write_stamp(folder, recipe.key)
                self._console.print(f"  [dim]adopted existing {escape(str(folder))}[/dim]")
                return
            self._console.print(f"  [yellow]removing unverified {escape(str(folder))}[/yellow]")
            shutil.rmtree(folder)
        self._build_venv(recipe, runner)
        if not self._verify_venv(recipe, runner, quiet=False):
            log = self._log(recipe)
            raise PrepareError(f"{recipe.label} was built but does not verify; see {log}")
        write_stamp(folder, recipe.key)

    def _build_venv(self, recipe: VenvRecipe, runner: CommandRunner) -> None:
        folder = self.folder(recipe)
        folder.parent.mkdir(parents=True, exist_ok=True)
        argv = [self._base_python, "-m", "venv", str(folder)]
        self._run(recipe, argv, "create venv", runner)
        pip = [str(recipe.python(self._layout)), "-m", "pip"]
        quiet = ["--disable-pip-version-check", "--progress-bar", "off"]
        for step in recipe.installs:
            extra: list[str] = []
            if TORCH_CPU in step and self._torch_index_url:
                extra = ["--extra-index-url", self._torch_index_url]
            argv = [*pip, "install", *quiet, *extra, *step]
            self._run(recipe, argv, f"pip install {step[-1]}", runner)
            if recipe.uninstalls and TORCH_CPU in step:
                argv = [*pip, "uninstall", "-y", *recipe.uninstalls]
                self._run(recipe, argv, "pip uninstall extras", runner)

    def _verify_venv(self, recipe: VenvRecipe, runner: CommandRunner, *, quiet: bool) -> bool:
        spec = {
            "pins": recipe.pins,
            "absent": list(recipe.uninstalls),
            "imports": list(recipe.imports),
            "files": [list(pair) for pair in recipe.package_files],
        }
        argv = [
            str(recipe.python(self._layout)),
            str(SCRIPTS / "verify_venv.py"),
            json.dumps(spec),
        ]
        try:
            self._run(recipe, argv, "verify", runner)
        except PrepareError as exc:
            if not quiet:
                self._console.print(f"[red]{escape(str(exc))}[/red]")
            return False
        return True

    def _build_model(self, recipe: ModelRecipe) -> None:
        target = self.folder(recipe)
        staging = staging_dir(target)
        try:
            self._run(recipe, recipe.command(self._layout, staging), f"run {recipe.script}")
            absent = [f for f in recipe.required_files if not (staging / f).is_file()]
            if absent:
                raise PrepareError(f"{recipe.label}: the build did not write {', '.join(absent)}")
            publish(staging, target, recipe.key)
        finally:
            clear_staging(target)

    def _run(
        self, recipe: Recipe, argv: list[str], step: str, runner: CommandRunner | None = None
    ) -> None:
        env = {**self._environ, **OFFLINE_ENV}
        # The gateway's own venv must not leak into the engine and quantization venvs.
        for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(name, None)
        if isinstance(recipe, ModelRecipe):
            # Under TOLLGATE_CPU_ISA a model is built as that CPU would build it
            # (quantize_awq.py's --dtype auto then calibrates in float32 on "AVX2").
            env.update(engine_env(self._environ))
        label = f"{recipe.label}: {step}"
        (runner or self._runner).run(argv, label=label, log=self._log(recipe), env=env)

    def _log(self, recipe: Recipe) -> Path:
        return self._layout.logs / f"prepare-{recipe.label.replace('/', '-')}.log"


def _dependencies(recipe: ModelRecipe) -> list[Recipe]:
    """Everything ``recipe`` needs, itself last, in build order."""
    found: list[Recipe] = []
    if recipe.source is not None:
        found += _dependencies(recipe.source)
    found += [recipe.venv, recipe]
    return found


def _add_with_dependencies(recipe: ModelRecipe, ordered: list[Recipe]) -> None:
    for dep in _dependencies(recipe):
        if dep not in ordered:
            ordered.append(dep)
