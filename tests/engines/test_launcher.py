"""Launcher process management, driven against a trivial stand-in engine process.

The stand-in is a few lines of ``http.server`` answering ``GET /v1/models``; its
behaviour (start-up delay, crash, ignoring SIGTERM, a child process) is chosen through
the engine's ``env`` in the profile, which also proves the launcher passes it on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from engines.cache import CacheLayout
from engines.cli import app
from engines.errors import LaunchError
from engines.launcher import API_SERVER, Launcher, VllmCommand
from engines.prepare import PreparedProfile
from engines.procs import LOG_ROTATE_BYTES, PidRecord, is_alive, start_ticks
from engines.profiles import EngineSpec, Profile, load_profile

STANDIN = r"""
import http.server, json, os, signal, subprocess, sys, time

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
mode = os.environ.get("STANDIN_MODE", "ok")
print(f"stand-in {args['--served-model-name']} mode={mode}", flush=True)
if mode == "crash":
    print("RuntimeError: cannot load model weights", flush=True)
    sys.exit(3)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("STANDIN_CHILD_PIDFILE"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    open(os.environ["STANDIN_CHILD_PIDFILE"], "w").write(str(child.pid))
time.sleep(float(os.environ.get("STANDIN_DELAY", "0")))

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": args["--served-model-name"]}]})
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if mode == "dies-on-first-request":
            print("AttributeError: '_OpNamespace' '_C' object has no attribute "
                  "'cpu_gemm_wna16'", flush=True)
            os._exit(1)
        ok = self.path == "/v1/chat/completions" and mode != "cannot-generate"
        body = {"choices": [{"message": {"content": "OK"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
        self.send_response(200 if ok else 500)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body if ok else {"error": "boom"}).encode())

    def log_message(self, *a):
        pass

print("loading done, serving", flush=True)
http.server.HTTPServer(("127.0.0.1", int(args["--port"])), Handler).serve_forever()
"""


LaunchFactory = Callable[[Profile], Launcher]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class StandinCommand:
    """Builds the stand-in's argv and counts how often the launcher asked for one."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self.built: list[str] = []

    def __call__(self, engine: EngineSpec) -> list[str]:
        self.built.append(engine.name)
        return [
            sys.executable,
            str(self.script),
            "--served-model-name",
            engine.served_model_name,
            "--port",
            str(engine.port),
        ]


def make_profile(**env: dict[str, str]) -> Profile:
    engines = [
        {
            "name": name,
            "tier": name,
            "served_model_name": f"standin-{name}",
            "model": {"repo": "unused"},
            "port": free_port(),
            "env": env.get(name, {}),
        }
        for name in ("small", "large")
    ]
    return Profile.model_validate(
        {"name": "test", "runtime": {"kind": "venv", "venv": "unused"}, "engines": engines}
    )


@pytest.fixture
def command(tmp_path: Path) -> StandinCommand:
    script = tmp_path / "standin_engine.py"
    script.write_text(STANDIN)
    return StandinCommand(script)


@pytest.fixture
def layout(tmp_path: Path) -> CacheLayout:
    return CacheLayout.at(tmp_path / "cache")


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    """Every launcher a test makes is brought down afterwards, whatever happened."""
    made: list[Launcher] = []
    yield made
    for launcher in made:
        launcher.down(grace=0.5)
        launcher.close()


@pytest.fixture
def launch(
    command: StandinCommand, layout: CacheLayout, launchers: list[Launcher]
) -> LaunchFactory:
    def factory(profile: Profile) -> Launcher:
        launcher = Launcher(
            profile, layout, command=command, console=Console(quiet=True), poll_interval=0.05
        )
        launchers.append(launcher)
        return launcher

    return factory


def test_up_starts_every_engine_and_waits_until_it_serves(
    launch: LaunchFactory, command: StandinCommand, layout: CacheLayout
) -> None:
    launcher = launch(make_profile())
    statuses = launcher.up(timeout=30)
    assert [(s.name, s.state) for s in statuses] == [("small", "ready"), ("large", "ready")]
    for status in statuses:
        assert status.pid is not None and status.models == (f"standin-{status.name}",)
        record = PidRecord.load(launcher.pid_path(status.name))
        assert record is not None and record.pid == status.pid and record.port == status.port
        assert "loading done" in launcher.log_path(status.name).read_text()
        assert launcher.pid_path(status.name).parent == layout.run
    assert sorted(command.built) == ["large", "small"]


def test_up_is_idempotent_for_healthy_engines(
    launch: LaunchFactory, command: StandinCommand
) -> None:
    profile = make_profile()
    first = launch(profile).up(timeout=30)
    again = launch(profile).up(timeout=30)  # a new launcher, as a second CLI call would be
    assert [s.pid for s in again] == [s.pid for s in first]
    assert len(command.built) == 2


def test_down_stops_engines_and_removes_pid_files(launch: LaunchFactory) -> None:
    launcher = launch(make_profile())
    pids = [s.pid for s in launcher.up(timeout=30)]
    assert launcher.down(grace=5) == ["small", "large"]
    for pid in pids:
        assert pid is not None and not _running(pid)
    assert [s.state for s in launcher.status()] == ["stopped", "stopped"]
    assert not list(launcher.layout.run.glob("*.pid"))
    assert launcher.down() == []


def test_down_stops_only_the_named_engine(launch: LaunchFactory) -> None:
    launcher = launch(make_profile())
    launcher.up(timeout=30)
    assert launcher.down(["large"], grace=5) == ["large"]
    assert [s.state for s in launcher.status()] == ["ready", "stopped"]


def test_down_kills_the_whole_process_group(launch: LaunchFactory, tmp_path: Path) -> None:
    child_pidfile = tmp_path / "child.pid"
    launcher = launch(make_profile(small={"STANDIN_CHILD_PIDFILE": str(child_pidfile)}))
    launcher.up(["small"], timeout=30)
    child = int(child_pidfile.read_text())
    assert _running(child)
    launcher.down(["small"], grace=5)
    _wait_gone(child)
    assert not _running(child)


def test_down_escalates_to_sigkill_after_the_grace_period(launch: LaunchFactory) -> None:
    launcher = launch(make_profile(small={"STANDIN_MODE": "ignore-term"}))
    pid = launcher.up(["small"], timeout=30)[0].pid
    started = time.monotonic()
    assert launcher.down(["small"], grace=0.5) == ["small"]
    assert time.monotonic() - started >= 0.5
    assert pid is not None and not _running(pid)


def test_an_engine_that_dies_fails_up_with_its_log_tail(launch: LaunchFactory) -> None:
    launcher = launch(make_profile(small={"STANDIN_MODE": "crash"}))
    with pytest.raises(LaunchError, match="exited during start-up") as info:
        launcher.up(["small"], timeout=30)
    assert "cannot load model weights" in str(info.value)
    assert not launcher.pid_path("small").exists()


def test_an_engine_that_dies_on_its_first_request_is_never_ready(
    launch: LaunchFactory,
) -> None:
    # An AWQ engine on a CPU whose vLLM build lacks the W4A16 kernel: it lists its model
    # and only dies when a real request runs a forward pass.
    launcher = launch(make_profile(small={"STANDIN_MODE": "dies-on-first-request"}))
    with pytest.raises(LaunchError, match="exited during start-up") as info:
        launcher.up(["small"], timeout=30)
    assert "cpu_gemm_wna16" in str(info.value)


def test_an_engine_that_lists_its_model_but_generates_nothing_is_not_ready(
    launch: LaunchFactory,
) -> None:
    launcher = launch(make_profile(small={"STANDIN_MODE": "cannot-generate"}))
    with pytest.raises(LaunchError, match=r"not ready after 2s"):
        launcher.up(["small"], timeout=2.0)
    assert launcher.status(["small"])[0].state == "stopped"


def test_an_engine_that_is_not_ready_in_time_is_stopped(launch: LaunchFactory) -> None:
    launcher = launch(make_profile(small={"STANDIN_DELAY": "60"}))
    with pytest.raises(LaunchError, match=r"not ready after 1s") as info:
        launcher.up(["small"], timeout=1.0)
    assert "mode=ok" in str(info.value)
    assert not launcher.pid_path("small").exists()
    assert launcher.status(["small"])[0].state == "stopped"


def test_up_refuses_a_port_taken_by_something_else(launch: LaunchFactory) -> None:
    profile = make_profile()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", profile.engine("small").port))
        squatter.listen()
        with pytest.raises(LaunchError, match="is taken by another process"):
            launch(profile).up(["small"], timeout=5)


def test_an_engine_already_served_outside_the_launcher_is_left_alone(
    launch: LaunchFactory, command: StandinCommand
) -> None:
    profile = make_profile()
    external = subprocess.Popen(command(profile.engine("small")), stdout=subprocess.DEVNULL)
    command.built.clear()
    try:
        launcher = launch(profile)
        _wait_until(lambda: launcher.status(["small"])[0].ready)
        status = launcher.up(["small"], timeout=10)[0]
        assert command.built == []
        assert status.state == "ready (external)"
        assert launcher.down(["small"]) == []  # not ours to stop
        assert external.poll() is None
    finally:
        external.terminate()
        external.wait()


def test_a_large_log_is_rotated_on_start(launch: LaunchFactory) -> None:
    launcher = launch(make_profile())
    log = launcher.log_path("small")
    log.parent.mkdir(parents=True)
    log.write_bytes(b"old run\n" * (LOG_ROTATE_BYTES // 8 + 1))
    launcher.up(["small"], timeout=30)
    assert log.with_name(log.name + ".1").read_bytes().startswith(b"old run")
    assert "old run" not in log.read_text()


def test_a_stale_pid_file_is_replaced(launch: LaunchFactory) -> None:
    launcher = launch(make_profile())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    PidRecord("small", dead.pid, None, "127.0.0.1", 1, "x", "", (), 0.0).save(
        launcher.pid_path("small")
    )
    status = launcher.up(["small"], timeout=30)[0]
    assert status.ready and status.pid != dead.pid


def test_a_recycled_pid_is_not_taken_for_the_engine() -> None:
    me = os.getpid()
    ticks = start_ticks(me)
    assert ticks is not None
    record = PidRecord("small", me, ticks, "127.0.0.1", 1, "x", "", (), 0.0)
    assert is_alive(record)
    assert not is_alive(PidRecord("small", me, ticks + 1, "127.0.0.1", 1, "x", "", (), 0.0))


def test_container_profiles_are_not_launched_here(layout: CacheLayout) -> None:
    with pytest.raises(LaunchError, match="deploy/"):
        Launcher(load_profile("a100-large", environ={}), layout)


def test_vllm_command_prepares_once_and_runs_the_api_server() -> None:
    calls: list[str] = []
    profile = load_profile("local-cpu", environ={})

    def prepare(p: Profile) -> PreparedProfile:
        calls.append(p.name)
        return PreparedProfile(python=Path("/venv/bin/python"), models={"small": "/m/awq"})

    command = VllmCommand(profile, prepare)
    argv = command(profile.engine("small"))
    command(profile.engine("small"))
    assert calls == ["local-cpu"]
    assert argv[:3] == ["/venv/bin/python", "-m", API_SERVER]
    assert argv[argv.index("--model") + 1] == "/m/awq"
    assert argv[argv.index("--port") + 1] == "8101"
    assert "--enforce-eager" in argv


# -- the command line --------------------------------------------------------------------


def test_cli_status_reports_stopped_engines_with_exit_code_3(tmp_path: Path) -> None:
    env = {"TOLLGATE_CACHE": str(tmp_path), "TOLLGATE_ENGINE_PORT_SMALL": str(free_port())}
    env["TOLLGATE_ENGINE_PORT_LARGE"] = str(free_port())
    result = CliRunner().invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 3, result.output
    assert '"state": "stopped"' in result.stdout
    assert env["TOLLGATE_ENGINE_PORT_SMALL"] in result.stdout


def test_cli_reports_engine_errors_without_a_traceback(tmp_path: Path) -> None:
    env = {"TOLLGATE_CACHE": str(tmp_path)}
    result = CliRunner().invoke(app, ["prepare", "--profile", "a100-small"], env=env)
    assert result.exit_code == 1
    assert "error:" in result.output and "container image" in result.output
    result = CliRunner().invoke(app, ["up", "--profile", "no-such-profile"], env=env)
    assert result.exit_code == 1 and "unknown profile" in result.output


# -- helpers -----------------------------------------------------------------------------


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    _wait_until(lambda: not _running(pid), timeout)


def _wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
