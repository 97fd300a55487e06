"""A real Redis Cluster on loopback for tests and benchmarks: ``primaries`` nodes with
``cluster-enabled yes`` (and ``replicas`` replicas each), joined with
``redis-cli --cluster create ... --cluster-yes``."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import redis

from tests.support.net import free_port, wait_for
from tests.support.redis_server import RedisServer


class ClusterSetup:
    """Start, query and break a cluster; ``url`` is its ``redis+cluster://`` URL."""

    def __init__(
        self, base: Path, *, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 1000
    ) -> None:
        self.base = base
        self.nodes: list[RedisServer] = []
        self._primaries = primaries
        self._replicas = replicas
        self._node_timeout_ms = node_timeout_ms

    @property
    def url(self) -> str:
        live = [n for n in self.nodes if n.proc is not None]
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in live[:3])

    def start(self, timeout: float = 30.0) -> ClusterSetup:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        try:
            for i in range(self._primaries * (1 + self._replicas)):
                node = RedisServer(
                    self.base / f"node{i}",
                    appendfsync="everysec",
                    extra=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        str(self._node_timeout_ms),
                        "--repl-diskless-sync-delay",
                        "0",
                        # The bus port would be port + 10000 (over 65535 for many ports).
                        "--cluster-port",
                        str(free_port()),
                    ],
                )
                self.nodes.append(node.start())
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    str(self._replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            wait_for(self._ready, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def client(self, node: RedisServer) -> redis.Redis:
        return node.client()

    def owner(self, key: str) -> RedisServer:
        """The primary serving ``key``'s slot, as the cluster says."""
        live = next(n for n in self.nodes if n.proc is not None)
        with contextlib.closing(live.client()) as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(key)

    def node_id(self, node: RedisServer) -> str:
        with contextlib.closing(node.client()) as c:
            return str(c.execute_command("CLUSTER", "MYID").decode())

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_stable(self, timeout: float = 30.0) -> None:
        wait_for(self._ready, timeout)

    def _ready(self) -> bool:
        """Every live node says the cluster is ok, with every replica in sync."""
        with contextlib.suppress(redis.RedisError, OSError):
            for node in self.nodes:
                if node.proc is None:
                    continue
                with contextlib.closing(node.client()) as c:
                    if b"cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                        return False
                    repl = c.info("replication")
                    if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                        return False
            return True
        return False
