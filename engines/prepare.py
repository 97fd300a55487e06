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
from collections.abc import Mapping
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
from engines.errors import PrepareError
from engines.profiles import Profile
from engines.recipes import (
    ENGINE_VENVS,
    MODEL_ARTIFACTS,
    OFFLINE_ENV,
    SCRIPTS,
    TORCH_CPU,
    ModelRecipe,
    VenvRecipe,
)
from engines.runner import CommandRunner

TORCH_INDEX_ENV = "TOLLGATE_TORCH_INDEX_URL"
Recipe = VenvRecipe | ModelRecipe


@dataclass(frozen=True)
class PreparedProfile:
    """What the launcher needs: the engine interpreter and each engine's ``--model``."""

    python: Path
    models: Mapping[str, str]


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
    ) -> None:
        self._layout = layout
        self._runner = runner
        self._console = console
        self._base_python = base_python
        self._torch_index_url = torch_index_url

    def plan(self, profile: Profile) -> list[Recipe]:
        """The recipes the profile needs, dependencies first, each once."""
        if profile.runtime.kind != "venv":
            raise PrepareError(
                f"profile {profile.name!r} runs from the container image "
                f"{profile.runtime.image}; nothing to prepare here (see deploy/)"
            )
        venv = ENGINE_VENVS.get(profile.runtime.venv)
        if venv is None:
            known = ", ".join(ENGINE_VENVS)
            raise PrepareError(f"unknown engine venv {profile.runtime.venv!r} (known: {known})")
        ordered: list[Recipe] = [venv]
        for engine in profile.engines:
            name = engine.model.artifact
            if name is None:
                continue
            recipe = MODEL_ARTIFACTS.get(name)
            if recipe is None:
                known = ", ".join(MODEL_ARTIFACTS)
                raise PrepareError(f"engine {engine.name!r}: unknown artifact {name!r} ({known})")
            _add_with_dependencies(recipe, ordered)
        return ordered

    def missing(self, profile: Profile) -> list[Recipe]:
        """The planned recipes whose folder is not stamped with the current key."""
        return [r for r in self.plan(profile) if not is_ready(self.folder(r), r.key)]

    def folder(self, recipe: Recipe) -> Path:
        return recipe.folder(self._layout)

    def prepare(self, profile: Profile) -> PreparedProfile:
        plan = self.plan(profile)
        started = time.monotonic()
        with cache_lock(self._layout.root):
            for recipe in plan:
                self._ensure(recipe)
        venv = plan[0]
        assert isinstance(venv, VenvRecipe)
        models = {
            e.name: (
                str(self.folder(MODEL_ARTIFACTS[e.model.artifact]))
                if e.model.artifact
                else str(e.model.repo)
            )
            for e in profile.engines
        }
        took = time.monotonic() - started
        self._console.print(f"[green]✓[/green] profile {profile.name} prepared in {took:.1f}s")
        return PreparedProfile(python=venv.python(self._layout), models=models)

    def _ensure(self, recipe: Recipe) -> None:
        folder = self.folder(recipe)
        if is_ready(folder, recipe.key):
            self._console.print(f"[green]✓[/green] {recipe.label} [dim](cached: {folder})[/dim]")
            return
        self._console.print(f"[cyan]→[/cyan] building {recipe.label} [dim]→ {folder}[/dim]")
        started = time.monotonic()
        if isinstance(recipe, VenvRecipe):
            self._ensure_venv(recipe)
        else:
            self._build_model(recipe)
        took = time.monotonic() - started
        self._console.print(f"[green]✓[/green] {recipe.label} ready in {took:.0f}s")

    def _ensure_venv(self, recipe: VenvRecipe) -> None:
        folder = self.folder(recipe)
        if folder.exists():
            # Unstamped or stamped with an old key: adopt it if it verifies as exactly
            # what the recipe builds, else start from scratch (pip over a half-written
            # site-packages is not trustworthy).
            remove_stamp(folder)
            if (folder / "bin" / "python").exists() and self._verify_venv(recipe, quiet=True):
                write_stamp(folder, recipe.key)
                self._console.print(f"  [dim]adopted existing {escape(str(folder))}[/dim]")
                return
            self._console.print(f"  [yellow]removing unverified {escape(str(folder))}[/yellow]")
            shutil.rmtree(folder)
        self._build_venv(recipe)
        if not self._verify_venv(recipe, quiet=False):
            log = self._log(recipe)
            raise PrepareError(f"{recipe.label} was built but does not verify; see {log}")
        write_stamp(folder, recipe.key)

    def _build_venv(self, recipe: VenvRecipe) -> None:
        folder = self.folder(recipe)
        folder.parent.mkdir(parents=True, exist_ok=True)
        self._run(recipe, [self._base_python, "-m", "venv", str(folder)], "create venv")
        pip = [str(recipe.python(self._layout)), "-m", "pip"]
        quiet = ["--disable-pip-version-check", "--progress-bar", "off"]
        for step in recipe.installs:
            extra: list[str] = []
            if TORCH_CPU in step and self._torch_index_url:
                extra = ["--extra-index-url", self._torch_index_url]
            self._run(recipe, [*pip, "install", *quiet, *extra, *step], f"pip install {step[-1]}")
            if recipe.uninstalls and TORCH_CPU in step:
                removed = recipe.uninstalls
                self._run(recipe, [*pip, "uninstall", "-y", *removed], "pip uninstall extras")

    def _verify_venv(self, recipe: VenvRecipe, *, quiet: bool) -> bool:
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
            self._run(recipe, argv, "verify")
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

    def _run(self, recipe: Recipe, argv: list[str], step: str) -> None:
        env = {**os.environ, **OFFLINE_ENV}
        # The gateway's own venv must not leak into the engine and quantization venvs.
        for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(name, None)
        label = f"{recipe.label}: {step}"
        self._runner.run(argv, label=label, log=self._log(recipe), env=env)

    def _log(self, recipe: Recipe) -> Path:
        return self._layout.logs / f"prepare-{recipe.label.replace('/', '-')}.log"


def _add_with_dependencies(recipe: ModelRecipe, ordered: list[Recipe]) -> None:
    deps: list[Recipe] = [recipe.venv]
    if recipe.source is not None:
        _add_with_dependencies(recipe.source, ordered)
    deps.append(recipe)
    for dep in deps:
        if dep not in ordered:
            ordered.append(dep)
