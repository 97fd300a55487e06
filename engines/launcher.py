"""Start, watch and stop a profile's engines as detached background processes.

``Launcher(profile).up()`` prepares what is missing, starts every engine that is not
already serving, and waits until each is ready: it lists its model under ``GET
/v1/models`` *and* has generated a token for a real chat request. An answering health
endpoint is not enough: an engine whose kernels are missing on this CPU starts and
answers ``/v1/models``, then dies on its first forward pass.
``down()`` stops them (SIGTERM to the process group, SIGKILL after a grace period) and
``status()`` reports each one. Pid and log files live in the cache's run folder.

A test session can run its own engines on free ports beside a developer's::

    profile = load_profile("local-cpu", ports={"small": port_a, "large": port_b})
    layout = CacheLayout(root=CacheLayout.from_env().root, run=tmp_path / "run")
    with Launcher(profile, layout) as launcher:
        launcher.up()          # prepares first if the cache is cold
        ...
        launcher.down()
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from engines.cache import CacheLayout
from engines.cpu import engine_env
from engines.errors import LaunchError
from engines.prepare import PreparedProfile, Preparer
from engines.procs import PidRecord, is_alive, spawn, start_ticks, stop_group
from engines.profiles import EngineSpec, Profile
from engines.recipes import OFFLINE_ENV
from engines.runner import ConsoleRunner, Heartbeat, tail

DEFAULT_TIMEOUT = 600.0
DEFAULT_GRACE = 20.0
API_SERVER = "vllm.entrypoints.openai.api_server"
#: A real chat request for one token: what "ready" means.
READY_PROMPT = "Say OK."
READY_TIMEOUT = 60.0


class CommandBuilder(Protocol):
    """Returns the argv that serves ``engine`` (the seam tests fill with a stand-in)."""

    def __call__(self, engine: EngineSpec) -> list[str]: ...


class VllmCommand:
    """vLLM's OpenAI server from the prepared engine venv; prepares on first use."""

    def __init__(self, profile: Profile, prepare: Callable[[Profile], PreparedProfile]) -> None:
        self._profile = profile
        self._prepare = prepare
        self._prepared: PreparedProfile | None = None

    def __call__(self, engine: EngineSpec) -> list[str]:
        if self._prepared is None:
            self._prepared = self._prepare(self._profile)
        prepared = self._prepared
        model = prepared.models[engine.name]
        return [str(prepared.python), "-m", API_SERVER, *engine.server_args(model)]


@dataclass(frozen=True)
class EngineStatus:
    """One engine as seen now: its process, its port and whether it serves its model."""

    name: str
    tier: str
    host: str
    port: int
    served_model_name: str
    pid: int | None
    alive: bool
    ready: bool
    models: tuple[str, ...]
    log: Path

    @property
    def state(self) -> str:
        if self.ready:
            return "ready" if self.alive else "ready (external)"
        if self.alive:
            return "starting"
        return "stopped"


class Launcher:
    """Runs a profile's engines in the background and tracks them through pid files."""

    def __init__(
        self,
        profile: Profile,
        layout: CacheLayout | None = None,
        *,
        command: CommandBuilder | None = None,
        console: Console | None = None,
        http: httpx.Client | None = None,
        environ: Mapping[str, str] | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        if profile.runtime.kind != "venv":
            raise LaunchError(
                f"profile {profile.name!r} runs from the image {profile.runtime.image}; "
                "start it with deploy/ (docker compose or kubernetes), not here"
            )
        self.profile = profile
        self.layout = layout or CacheLayout.from_env()
        self._console = console or Console(stderr=True)
        self._environ = dict(os.environ if environ is None else environ)
        if command is None:
            preparer = Preparer(
                self.layout,
                ConsoleRunner(self._console),
                self._console,
                environ=self._environ,
            )
            command = VllmCommand(profile, preparer.prepare)
        self._command = command
        self._http = http or httpx.Client(timeout=httpx.Timeout(3.0, connect=1.0))
        self._poll = poll_interval
        # poll() of the engines this object started, to reap them: a zombie child would
        # otherwise keep its process group "alive".
        self._children: dict[str, Callable[[], object]] = {}

    # -- files ------------------------------------------------------------------------
    def pid_path(self, name: str) -> Path:
        return self.layout.run / f"{self.profile.name}-{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.layout.run / f"{self.profile.name}-{name}.log"

    # -- public API -------------------------------------------------------------------
    def status(self, names: Sequence[str] | None = None) -> list[EngineStatus]:
        return [self._status(engine) for engine in self._select(names)]

    def up(
        self, names: Sequence[str] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> list[EngineStatus]:
        """Start the engines that are not serving yet and wait until all are ready."""
        waiting: dict[str, float] = {}
        for engine in self._select(names):
            record = PidRecord.load(self.pid_path(engine.name))
            if record is not None and is_alive(record):
                if self._probe(engine) is not None:
                    self._say(f"[green]✓[/green] {engine.name} already running (pid {record.pid})")
                    continue
                waiting[engine.name] = record.started_at
                continue
            self.pid_path(engine.name).unlink(missing_ok=True)
            if self._probe(engine) is not None:
                self._say(f"[green]✓[/green] {engine.name} served on :{engine.port} (external)")
                continue
            if _port_busy(engine.host, engine.port):
                raise LaunchError(
                    f"{engine.name}: port {engine.port} is taken by another process "
                    "that does not serve this engine's model; free it or choose another port"
                )
            self._start(engine)
            waiting[engine.name] = time.time()
        if waiting:
            self._wait_ready(waiting, timeout)
        return self.status(names)

    def down(
        self, names: Sequence[str] | None = None, *, grace: float = DEFAULT_GRACE
    ) -> list[str]:
        """Stop the engines this launcher's run folder knows of; returns those stopped."""
        stopped: list[str] = []
        for engine in self._select(names):
            path = self.pid_path(engine.name)
            record = PidRecord.load(path)
            if record is None:
                continue
            if is_alive(record):
                killed = stop_group(record, grace, reap=self._children.get(engine.name, _nothing))
                how = "killed after grace period" if killed else "stopped"
                self._say(f"[yellow]■[/yellow] {engine.name} {how} (pid {record.pid})")
                stopped.append(engine.name)
            self._children.pop(engine.name, None)
            path.unlink(missing_ok=True)
        return stopped

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------
    def _select(self, names: Sequence[str] | None) -> list[EngineSpec]:
        if not names:
            return list(self.profile.engines)
        return [self.profile.engine(name) for name in names]

    def _start(self, engine: EngineSpec) -> None:
        argv = self._command(engine)
        env = {**self._environ, **OFFLINE_ENV, **engine.env}
        for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(name, None)
        env.update(engine_env(self._environ))
        log = self.log_path(engine.name)
        try:
            proc = spawn(argv, env, log)
        except OSError as exc:
            raise LaunchError(f"{engine.name}: cannot start {argv[0]}: {exc}") from exc
        self._children[engine.name] = proc.poll
        PidRecord(
            engine=engine.name,
            pid=proc.pid,
            start_ticks=start_ticks(proc.pid),
            host=engine.host,
            port=engine.port,
            served_model_name=engine.served_model_name,
            log=str(log),
            argv=tuple(argv),
            started_at=time.time(),
        ).save(self.pid_path(engine.name))
        self._say(f"[cyan]→[/cyan] {engine.name} starting on :{engine.port} (pid {proc.pid})")

    def _wait_ready(self, waiting: dict[str, float], timeout: float) -> None:
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[last]}"),
        )
        began = time.monotonic()
        with Progress(*columns, console=self._console, transient=True) as progress:
            tasks = {n: progress.add_task(f"{n} loading", last="") for n in waiting}
            beats = {n: Heartbeat(self._console) for n in waiting}
            pending = dict(waiting)
            while pending:
                for name in list(pending):
                    engine = self.profile.engine(name)
                    failure = self._check(engine, began, timeout)
                    if failure is None and self._probe(engine) is not None:
                        took = time.time() - pending.pop(name)
                        progress.remove_task(tasks[name])
                        self._say(f"[green]✓[/green] {name} ready on :{engine.port} in {took:.0f}s")
                        continue
                    if failure is not None:
                        raise LaunchError(failure)
                    last = _last_line(self.log_path(name))
                    progress.update(tasks[name], last=escape(last[-90:]))
                    beats[name].maybe(f"{name} loading", last)
                if pending:
                    time.sleep(self._poll)

    def _check(self, engine: EngineSpec, began: float, timeout: float) -> str | None:
        """A failure message if the engine died or ran out of time, else None."""
        record = PidRecord.load(self.pid_path(engine.name))
        log = self.log_path(engine.name)
        if record is None or not is_alive(record):
            self._children.pop(engine.name, _nothing)()
            self.pid_path(engine.name).unlink(missing_ok=True)
            return f"{engine.name} exited during start-up; last lines of {log}:\n{tail(log)}"
        if time.monotonic() - began > timeout:
            # An engine that never got ready only burns the shared cores: stop it.
            stop_group(record, 5.0, reap=self._children.pop(engine.name, _nothing))
            self.pid_path(engine.name).unlink(missing_ok=True)
            return (
                f"{engine.name} was not ready after {timeout:.0f}s and was stopped; "
                f"last lines of {log}:\n{tail(log)}"
            )
        return None

    def _probe(self, engine: EngineSpec) -> tuple[str, ...] | None:
        """The model ids the engine serves, or None unless it serves its own model and
        generates a token with it."""
        try:
            response = self._http.get(f"{engine.base_url}/models")
            response.raise_for_status()
            ids = tuple(str(m.get("id")) for m in response.json().get("data", []))
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if engine.served_model_name not in ids or not self._generates(engine):
            return None
        return ids

    def _generates(self, engine: EngineSpec) -> bool:
        """True once a one-token chat request comes back with a generated token."""
        body = {
            "model": engine.served_model_name,
            "messages": [{"role": "user", "content": READY_PROMPT}],
            "max_tokens": 1,
            "temperature": 0,
        }
        try:
            response = self._http.post(
                f"{engine.base_url}/chat/completions", json=body, timeout=READY_TIMEOUT
            )
            response.raise_for_status()
            usage = response.json().get("usage") or {}
            return int(usage.get("completion_tokens") or 0) >= 1
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            return False

    def _status(self, engine: EngineSpec) -> EngineStatus:
        record = PidRecord.load(self.pid_path(engine.name))
        alive = record is not None and is_alive(record)
        models = self._probe(engine)
        return EngineStatus(
            name=engine.name,
            tier=engine.tier,
            host=engine.host,
            port=engine.port,
            served_model_name=engine.served_model_name,
            pid=record.pid if record is not None and alive else None,
            alive=alive,
            ready=models is not None,
            models=models or (),
            log=self.log_path(engine.name),
        )

    def _say(self, text: str) -> None:
        self._console.print(text)


def _nothing() -> object:
    return None


def _port_busy(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


def _last_line(log: Path) -> str:
    for line in reversed(tail(log, 5).splitlines()):
        # Progress bars rewrite their line with carriage returns: keep the latest state.
        text = line.rsplit("\r", 1)[-1].strip()
        if text:
            return text
    return ""
