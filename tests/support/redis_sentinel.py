"""Redis HA on loopback for tests and benchmarks: a primary, replicas and three real
sentinels (:class:`SentinelSetup`), or a Redis Cluster (:class:`ClusterSetup`).

Sentinels are ``redis-server <conf> --sentinel`` (what Debian's ``redis-sentinel``
package runs), with short detection times so a failover takes a few seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import redis

from tests.support.net import free_port, wait_for
from tests.support.redis_server import RedisServer

SERVICE = "tollgate"
#: Full syncs start at once (Redis 7 waits 5 s by default for more replicas to join).
_REPL = ["--repl-diskless-sync-delay", "0"]


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return binary


class Sentinel:
    """One ``redis-server --sentinel`` child process monitoring ``SERVICE``."""

    def __init__(self, data_dir: Path, primary_port: int, down_after_ms: int) -> None:
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.dir / "sentinel.conf"  # sentinels rewrite their config: their own file
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 3000\n"
            f"sentinel parallel-syncs {SERVICE} 2\n"
        )
        log = (self.dir / "sentinel.log").open("ab")
        self.proc = subprocess.Popen(
            [_redis_server(), str(conf), "--sentinel"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def master(self) -> dict[str, Any]:
        with contextlib.closing(self.client()) as c:
            info: dict[str, Any] = c.sentinel_master(SERVICE)
            return info

    def primary_port(self) -> int | None:
        with contextlib.closing(self.client()) as c:
            addr = c.sentinel_get_master_addr_by_name(SERVICE)
        return int(addr[1]) if addr else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class SentinelSetup:
    """A primary, ``replicas`` replicas and three sentinels on loopback.

    ``url()`` is the ``redis+sentinel://`` URL of the service; ``kill_primary()`` is the
    crash; ``wait_failover()`` waits until every sentinel names a new primary.
    """

    def __init__(self, base: Path, *, replicas: int = 2, down_after_ms: int = 500) -> None:
        self.base = base
        self.primary = RedisServer(base / "primary", appendfsync="everysec", extra=_REPL)
        self.replicas: list[RedisServer] = []
        self.sentinels: list[Sentinel] = []
        self._replica_count = replicas
        self._down_after_ms = down_after_ms

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    def url(self, **query: Any) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis+sentinel://{hosts}/{SERVICE}" + (f"?{tail}" if tail else "")

    def start(self, timeout: float = 20.0) -> SentinelSetup:
        try:
            self.primary.start()
            for i in range(self._replica_count):
                replica = RedisServer(
                    self.base / f"replica{i}",
                    appendfsync="everysec",
                    extra=[*_REPL, "--replicaof", "127.0.0.1", str(self.primary.port)],
                )
                self.replicas.append(replica.start())
            wait_for(lambda: all(_link_up(r) for r in self.replicas), 10)
            for i in range(3):
                self.sentinels.append(
                    Sentinel(self.base / f"sentinel{i}", self.primary.port, self._down_after_ms)
                )
            wait_for(self._sentinels_ready, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns it (its port stays free)."""
        old = self.current_primary()
        old.kill()
        return old

    def current_primary(self) -> RedisServer:
        port = self.sentinels[0].primary_port()
        return next(s for s in self.servers if s.port == port)

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> RedisServer:
        """Wait until every sentinel names another primary, which says it is one."""

        def done() -> bool:
            with contextlib.suppress(redis.RedisError, OSError):
                ports = {s.primary_port() for s in self.sentinels}
                if len(ports) == 1 and old_port not in ports and None not in ports:
                    new = self.current_primary()
                    with contextlib.closing(new.client()) as c:
                        return bool(c.execute_command("ROLE")[0] == b"master")
            return False

        wait_for(done, timeout)
        return self.current_primary()

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    def _sentinels_ready(self) -> bool:
        """Every sentinel sees the primary, its replicas and the two other sentinels."""
        with contextlib.suppress(redis.RedisError, OSError):
            for sentinel in self.sentinels:
                m = sentinel.master()
                if int(m["num-other-sentinels"]) != 2 or int(m["num-slaves"]) != len(self.replicas):
                    return False
            return True
        return False


def _link_up(replica: RedisServer) -> bool:
    with contextlib.suppress(redis.RedisError, OSError), contextlib.closing(replica.client()) as c:
        return bool(c.info("replication").get("master_link_status") == "up")
    return False
