"""``server.workers: N``: N gateway processes on one host that behave like one.

The supervisor (this process, the container's PID 1) serves nothing itself:

* **Sockets.** For each worker it binds the client port with ``SO_REUSEPORT`` and
  hands that socket to the worker, keeping no copy: the kernel hashes each new
  connection to one worker's accept queue. Measured on the 2-core dev box (2 workers,
  2,000 requests each on a new connection, client, stand-in engine and Redis on the
  same cores): ``SO_REUSEPORT`` split them 50/50 (±3 %) at 1 and at 16 concurrent
  clients; one listening socket inherited by both split them 60/40 and 74/26 at 1
  client (whichever loop wakes first accepts everything pending) and evenly at 16,
  where it was 8-15 % faster on that oversubscribed box. We take the even split: it
  makes a worker's share, and so the per-worker capacity figures, predictable; and a
  socket that no other process holds closes for real when its worker drains or dies,
  so new connections go to the other workers at once instead of queueing on a
  listener nobody accepts from (the flip side: connections a crashed worker had not
  yet accepted are reset, as for one process). Binding in the supervisor rather than
  in each worker makes a taken port fail at start, once, with a clear error.
* **Admin listener.** Only worker 0 serves ``server.admin_port`` (a plain socket,
  bound the same way). One process answers every admin request, so it sees one
  coherent state: its failed-login lockout counts every attempt, and a key revoked
  through it stops working there at once (in the other workers, after at most
  ``auth.key_cache_ttl_s``, as on another replica). ``/admin/engines`` shows worker
  0's view of the engines; ``/metrics`` shows all workers. While worker 0 restarts,
  the admin port refuses connections.
* **Signals.** SIGTERM and SIGINT are forwarded to every worker, each of which then
  does what one worker does (:class:`gateway.serve.DrainingServer`: readiness 503 for
  ``unready_seconds``, drain for up to ``drain_seconds``, flush the ledger, exit 0). A
  second signal is forwarded too, so it skips the wait as it does for one worker. The
  supervisor exits 0 once every worker has exited 0 (1 otherwise), and kills any left
  after the whole drain's time plus a margin. Workers run in their own process group,
  so a terminal's Ctrl-C reaches them once, through the supervisor, and they die with
  it if it is killed (``PR_SET_PDEATHSIG``).
* **Restarts.** A worker that exits while the supervisor is not stopping is logged and
  started again after a backoff (0.5 s doubling to 30 s; back to 0.5 s once a worker
  has lived a minute). A worker that fails before it ever served, on the first start,
  stops the gateway (exit 1): a bad config or a taken port fails fast, as for one.
* **Metrics.** The supervisor creates a private, empty directory for
  :mod:`gateway.metrics_multiproc`, passes it as ``PROMETHEUS_MULTIPROC_DIR``, retires
  each exited worker's files and removes the directory at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import uvicorn
from prometheus_client.core import CounterMetricFamily

from gateway import logs, metrics_multiproc
from gateway.config import Settings
from gateway.serve import DrainingServer, serve

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
#: A worker that lived this long is healthy again: its next restart waits BACKOFF_FIRST_S.
STABLE_AFTER_S = 60.0
#: How often a worker shares its scrape-time metrics with the others.
PUBLISH_INTERVAL_S = 1.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process receives from its supervisor (pickled on its stdin)."""

    index: int
    settings: Settings
    parent_pid: int
    socket_fd: int
    admin_fd: int | None
    ready_fd: int


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_r: int | None = None
    started_at: float = 0.0
    #: This slot's worker has served once (a later failure is restarted, not fatal).
    served: bool = False
    backoff_s: float = BACKOFF_FIRST_S
    restart_at: float | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)


def bind(host: str, port: int, *, reuse_port: bool, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket (``SO_REUSEPORT`` for the client port's group)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Starts ``server.workers`` gateway processes, restarts them, and stops them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._slots = [_Slot(i) for i in range(settings.server.workers)]
        self._signals: list[int] = []
        self._stopping = False
        self._deadline = float("inf")
        self._failed = False
        self._dir = Path()

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Serve until signalled and drained; the exit status for the gateway."""
        self._dir = Path(tempfile.mkdtemp(prefix="tollgate-metrics-"))
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info(
                "starting workers",
                extra={"workers": len(self._slots), "port": self._settings.server.port},
            )
            self._publish_restarts()
            for slot in self._slots:
                self._spawn(slot)
            while not self._done():
                self._wait(0.1)
                self._forward_signals()
                self._reap()
                self._restart_due()
                if time.monotonic() > self._deadline:
                    self._kill_all("the drain overran its time")
            codes = [c for s in self._slots for c in s.exit_codes[-1:]]
            ok = not self._failed and all(c == 0 for c in codes)
            log.info("workers stopped", extra={"exit_codes": codes})
            return 0 if ok else 1
        except OSError as exc:  # binding the port
            log.error("cannot start the workers: %s", exc)
            self._kill_all("start-up failed")
            return 1
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            shutil.rmtree(self._dir, ignore_errors=True)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)

    def _done(self) -> bool:
        return self._stopping and all(s.proc is None for s in self._slots)

    def _forward_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if not self._stopping:
                log.info("stopping workers", extra={"signal": signal.Signals(sig).name})
            self._stop(sig)

    def _stop(self, sig: int) -> None:
        if not self._stopping:
            server = self._settings.server
            margin = self._settings.ledger.shutdown_timeout_s + 15.0
            self._deadline = time.monotonic() + server.unready_seconds
            self._deadline += server.drain_seconds + margin
        self._stopping = True
        for slot in self._slots:
            slot.restart_at = None
            if slot.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(sig)

    def _kill_all(self, why: str) -> None:
        self._stopping = True
        for slot in self._slots:
            slot.restart_at = None
            if slot.proc is not None:
                log.error("killing worker", extra={"worker": slot.index, "why": why})
                slot.proc.kill()
                self._collect(slot, slot.proc.wait())
        self._failed = True

    # ------------------------------------------------------------------ workers

    def _spawn(self, slot: _Slot) -> None:
        server = self._settings.server
        sock = bind(server.host, server.port, reuse_port=True)
        admin = None
        if slot.index == 0 and server.admin_port is not None:
            admin = bind(server.admin_host, server.admin_port, reuse_port=False)
        ready_r, ready_w = os.pipe()
        spec = WorkerSpec(
            index=slot.index,
            settings=self._settings,
            parent_pid=os.getpid(),
            socket_fd=sock.fileno(),
            admin_fd=admin.fileno() if admin else None,
            ready_fd=ready_w,
        )
        fds = [sock.fileno(), ready_w, *([admin.fileno()] if admin else [])]
        env = {**os.environ, metrics_multiproc.ENV: str(self._dir)}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from gateway.workers import main; main()"],
                stdin=subprocess.PIPE,
                pass_fds=fds,
                env=env,
                process_group=0,
            )
            assert proc.stdin is not None
            with proc.stdin:
                proc.stdin.write(pickle.dumps(spec))
        finally:
            os.close(ready_w)
            sock.close()  # the worker owns it: its exit takes it out of the group
            if admin is not None:
                admin.close()
        slot.proc, slot.ready_r, slot.started_at = proc, ready_r, time.monotonic()
        slot.restart_at = None
        log.info("worker started", extra={"worker": slot.index, "pid": proc.pid})

    def _wait(self, timeout: float) -> None:
        """Sleep until a worker reports ready, a signal arrives, or ``timeout``."""
        pipes = {s.ready_r: s for s in self._slots if s.ready_r is not None}
        readable, _, _ = select.select(list(pipes), [], [], timeout)
        for fd in readable:
            slot = pipes[fd]
            if os.read(fd, 1):
                slot.served = True
            os.close(fd)
            slot.ready_r = None

    def _reap(self) -> None:
        for slot in self._slots:
            if slot.proc is None:
                continue
            code = slot.proc.poll()
            if code is None:
                continue
            pid = slot.proc.pid
            self._collect(slot, code)
            if self._stopping:
                log.info("worker exited", extra={"worker": slot.index, "pid": pid, "code": code})
                continue
            if not slot.served and slot.restarts == 0:
                log.error(
                    "worker failed on start; stopping the gateway",
                    extra={"worker": slot.index, "pid": pid, "code": code},
                )
                self._failed = True
                self._stop(signal.SIGTERM)
                continue
            if time.monotonic() - slot.started_at >= STABLE_AFTER_S:
                slot.backoff_s = BACKOFF_FIRST_S
            slot.restart_at = time.monotonic() + slot.backoff_s
            log.error(
                "worker exited unexpectedly; restarting it",
                extra={
                    "worker": slot.index,
                    "pid": pid,
                    "code": code,
                    "restart_in_s": slot.backoff_s,
                },
            )
            slot.backoff_s = min(slot.backoff_s * 2, BACKOFF_MAX_S)

    def _collect(self, slot: _Slot, code: int) -> None:
        assert slot.proc is not None
        metrics_multiproc.retire(self._dir, slot.proc.pid)
        slot.exit_codes.append(code)
        slot.proc = None
        if slot.ready_r is not None:
            os.close(slot.ready_r)
            slot.ready_r = None

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.restart_at is not None and now >= slot.restart_at and not self._stopping:
                slot.restarts += 1
                self._publish_restarts()
                self._spawn(slot)

    def _publish_restarts(self) -> None:
        family = CounterMetricFamily(
            "tollgate_worker_restarts",
            "Worker processes restarted by the supervisor after an unexpected exit.",
            labels=["worker"],
        )
        for slot in self._slots:
            family.add_metric([str(slot.index)], slot.restarts)
        metrics_multiproc.write_families(self._dir, "supervisor", [family])


# ---------------------------------------------------------------------- worker side


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this worker (a drain) if the supervisor dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    """Entry point of one worker process (started by :class:`Supervisor`)."""
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())
    _die_with_parent(spec.parent_pid)
    logs.configure(spec.settings.server.log_level)
    sock = socket.socket(fileno=spec.socket_fd)
    admin = [socket.socket(fileno=spec.admin_fd)] if spec.admin_fd is not None else None

    async def companion(server: uvicorn.Server) -> None:
        """Tell the supervisor this worker serves; share its scrape-time metrics."""
        assert isinstance(server, DrainingServer)
        metrics = server.services().metrics
        metrics.watch_worker(spec.index, lambda: server.server_state.total_requests)
        os.write(spec.ready_fd, b"1")
        os.close(spec.ready_fd)
        try:
            while True:
                metrics.publish()
                await asyncio.sleep(PUBLISH_INTERVAL_S)
        finally:
            metrics.publish()  # after the drain and the ledger flush: the final counts

    serve(spec.settings, sockets=[sock], admin_sockets=admin, companion=companion)
