"""A real ``redis-server`` for tests: a free port, a temp dir, killed afterwards.

Persistence is on (AOF, fsync always) so a test can kill the server mid-run, start it
again on the same port and find the counters it had, as a production Redis would.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from tests.support.net import free_port


class RedisServer:
    """One redis-server child process; ``stop``/``kill``/``start`` keep port and data."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendfsync: str = "always",
        password: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        #: "always" for tests that kill the server; benchmarks use production's "everysec".
        self.appendfsync = appendfsync
        #: ``requirepass``, as production runs it (None: no password).
        self.password = password
        #: More redis-server options (``--replicaof``, ``--cluster-enabled``, ...).
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                *(["--requirepass", self.password] if self.password else []),
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited:\n" + self.log_tail())
            with contextlib.suppress(redis.RedisError, OSError):
                client = redis.Redis(port=self.port, socket_timeout=0.5, password=self.password)
                try:
                    if client.ping():
                        return self
                finally:
                    client.close()
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("redis-server did not start:\n" + self.log_tail())

    def kill(self) -> None:
        """SIGKILL: the crash case (no shutdown save; the AOF has every write)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        self._wait_port_free()

    def pause(self) -> None:
        """SIGSTOP: the server hangs (timeouts instead of refused connections)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, password=self.password)

    def log_tail(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def _wait_port_free(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.02)
