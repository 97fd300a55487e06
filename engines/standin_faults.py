"""Misbehaviour and observation for the stand-in engine (`engines.standin`).

Everything a test uses to make the stand-in fail and to see what happened: the fault
model, the `/_standin/*` hook routes and their stats, client-disconnect detection, and
the child-process harness. `engines.standin` itself only speaks vLLM.

Hooks: `GET|POST /_standin/faults` reads or replaces the fault; `GET /_standin/stats`
returns request counts (received, in flight, completed, aborted by the client, dropped
by the `close` fault, faults injected), the scheduler's running/waiting counts, and the
last request's path, headers and body; `POST /_standin/reset` zeroes the stats and
clears the fault.

A `Fault` says what goes wrong; a `FaultInjector` decides, once per generation request,
whether it fires. One fault is active at a time, set at start with `--fault SPEC` and
at runtime with `POST /_standin/faults` (JSON), which replaces the active fault.

Modes (a spec's argument after the colon fills the field in brackets):

    none                        behave normally
    error_5xx:STATUS  [status]  reply STATUS (default 500; any 4xx/5xx) in vLLM's error shape
    close                       drop the connection without sending a response
    hang                        never respond; wait until the client gives up
    stall_after:N     [tokens]  stream N tokens, then hang until the client disconnects
    slow_first_token:MS   [ms]  add MS milliseconds to the time to first token
    error_mid_stream:N [tokens] stream N tokens, then an error frame and `data: [DONE]`
    trickle:MS            [ms]  send the whole answer one byte every MS milliseconds

`stall_after:0` answers the headers of a stream and then nothing (headers, then a stall).

Without streaming, `stall_after` hangs and `error_mid_stream` answers 500 after the
time the N tokens take. Options, comma-separated in a spec or as JSON fields:

    count=K   fire for the next K generation requests only, then revert to `none`
              (a 5xx burst is `error_5xx:503,count=5`)
    p=P       fire with probability P (JSON: `probability`), drawn from a seeded RNG

Spec `error_5xx:503,count=3` is JSON `{"mode": "error_5xx", "status": 503, "count": 3}`.

"Connection refused" is not a mode, since a listening server cannot refuse: stop the
child with `StandinProcess.stop()` (or leave `run_standin`) and its port refuses.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from engines.errors import LaunchError

MODES = (
    "none",
    "error_5xx",
    "close",
    "hang",
    "stall_after",
    "slow_first_token",
    "error_mid_stream",
    "trickle",
)
_ARG_FIELD = {
    "error_5xx": "status",
    "stall_after": "tokens",
    "error_mid_stream": "tokens",
    "slow_first_token": "ms",
    "trickle": "ms",
}
_INT_FIELDS = ("status", "tokens", "count")
T = TypeVar("T")
RAW_SEND = "standin.raw_send"  # scope key under which the app keeps the server's `send`


@dataclass(frozen=True, slots=True)
class Fault:
    """One misbehaviour of the stand-in engine and how often it happens."""

    mode: str = "none"
    status: int = 500
    tokens: int = 0
    ms: float = 0.0
    probability: float = 1.0
    count: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; expected one of {MODES}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"fault status must be 4xx or 5xx, got {self.status}")
        if self.tokens < 0 or self.ms < 0:
            raise ValueError("fault tokens and ms must not be negative")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability must be within [0, 1], got {self.probability}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"fault count must be at least 1, got {self.count}")

    @classmethod
    def from_spec(cls, spec: str) -> Fault:
        """Parse a CLI spec such as `stall_after:4` or `error_5xx:503,count=3,p=0.5`."""
        head, *options = [part.strip() for part in spec.split(",")]
        mode, _, arg = head.partition(":")
        pairs = [(_ARG_FIELD.get(mode, ""), arg)] if arg else []
        if arg and mode not in _ARG_FIELD:
            raise ValueError(f"fault mode {mode!r} takes no argument")
        for option in options:
            key, sep, value = option.partition("=")
            if not sep:
                raise ValueError(f"fault option {option!r} is not key=value")
            pairs.append(("probability" if key == "p" else key, value))
        data: dict[str, Any] = {"mode": mode}
        for key, value in pairs:
            try:
                data[key] = float(value)
            except ValueError:
                raise ValueError(f"fault option {key}={value!r} is not a number") from None
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: object) -> Fault:
        """Build a fault from the JSON accepted by `POST /_standin/faults`."""
        if not isinstance(data, dict):
            raise ValueError("fault must be a JSON object")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown fault fields {unknown}")
        for key, value in data.items():
            if key == "mode" or (key == "count" and value is None):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"fault field {key!r} must be a number")
            if key in _INT_FIELDS and value != int(value):
                raise ValueError(f"fault field {key!r} must be an integer")
        ints = {k: int(v) for k, v in data.items() if k in _INT_FIELDS and v is not None}
        return cls(**(data | ints))

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def tokens_before_failing(self, tokens: int) -> int | None:
        """How many of `tokens` to emit before stalling or erroring; None to finish."""
        if self.mode in ("stall_after", "error_mid_stream"):
            return min(self.tokens, tokens)
        return None

    @property
    def extra_ttft_ms(self) -> float:
        return self.ms if self.mode == "slow_first_token" else 0.0


NO_FAULT = Fault()


class FaultInjector:
    """Holds the active fault and draws, per generation request, whether it fires.

    `count` is spent only by requests the fault hits, so `count=3,p=0.5` fails exactly
    three requests, at random positions.
    """

    def __init__(self, fault: Fault = NO_FAULT, *, seed: int | None = None) -> None:
        self._fault = fault
        self._rng = random.Random(seed)

    @property
    def current(self) -> Fault:
        """The active fault; its `count` is what remains of the burst."""
        return self._fault

    def set(self, fault: Fault) -> None:
        self._fault = fault

    def draw(self) -> Fault:
        """The fault this request suffers (`NO_FAULT` if none)."""
        fault = self._fault
        if fault.mode == "none":
            return NO_FAULT
        if fault.probability < 1.0 and self._rng.random() >= fault.probability:
            return NO_FAULT
        if fault.count is not None:
            self._fault = NO_FAULT if fault.count == 1 else replace(fault, count=fault.count - 1)
        return fault


Outcome = Literal["completed", "aborted", "dropped"]


@dataclass(slots=True)
class Stats:
    """What `GET /_standin/stats` reports about generation and embedding requests."""

    received: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    completed: int = 0  # responses delivered in full, error responses included
    aborted: int = 0  # the client disconnected before the response was complete
    dropped: int = 0  # connections closed by the `close` fault
    faults_injected: int = 0
    last_request: dict[str, Any] | None = None  # {"path", "headers", "body"}

    def opened(self) -> None:
        self.received += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def closed(self, outcome: Outcome) -> None:
        self.in_flight -= 1
        setattr(self, outcome, getattr(self, outcome) + 1)


class StandinHooks:
    """The active fault and the stats, and the `/_standin/*` routes that expose them."""

    def __init__(self, fault: Fault, seed: int | None, load: Callable[[], dict[str, int]]) -> None:
        self.faults = FaultInjector(fault, seed=seed)
        self.stats = Stats()
        self._load = load  # the scheduler's running and waiting counts

    def routes(self) -> list[Route]:
        return [
            Route("/_standin/faults", self.fault, methods=["GET", "POST"]),
            Route("/_standin/stats", self.report, methods=["GET"]),
            Route("/_standin/reset", self.reset, methods=["POST"]),
        ]

    async def fault(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.faults.set(Fault.from_json(orjson.loads(await request.body())))
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                error = {"message": str(exc), "type": "Bad Request", "param": None, "code": 400}
                return Response(orjson.dumps({"error": error}), 400, media_type="application/json")
        return Response(orjson.dumps(self.faults.current.to_json()), media_type="application/json")

    async def report(self, request: Request) -> Response:
        body = orjson.dumps(asdict(self.stats) | self._load())
        return Response(body, media_type="application/json")

    async def reset(self, request: Request) -> Response:
        """Zero the stats (requests still in flight stay counted) and clear the fault."""
        self.stats = Stats(in_flight=self.stats.in_flight, peak_in_flight=self.stats.in_flight)
        self.faults.set(NO_FAULT)
        return await self.report(request)


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone (call only after the request body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def drop_connection(scope: Scope) -> bool:
    """Close the client's socket without a response (uvicorn only; False elsewhere)."""
    cycle = getattr(scope.get(RAW_SEND), "__self__", None)
    abort = getattr(getattr(cycle, "transport", None), "abort", None)
    if not callable(abort):
        return False
    abort()
    return True


async def unless_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work`, cancelling it if the client disconnects first (None), as vLLM does."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    return None if task.cancelled() else task.result()


class EventStream(StreamingResponse):
    """An SSE response that stops its generator when the client leaves, then calls `on_close`.

    Leaner than Starlette's loop: chunks go to the server's own `send` (kept in the scope
    under RAW_SEND), skipping the middleware wrappers on every token.
    """

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        headers: Mapping[str, str],
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(body, headers=headers, media_type="text/event-stream")
        self._body, self._on_close = body, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await unless_disconnected(receive, self._send_all(scope.get(RAW_SEND, send)))
        finally:
            await self._body.aclose()  # also settles a generator that never started
            self._on_close()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for chunk in self._body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class StandinProcess:
    """A stand-in engine in a child process on a local port; start, stop and restart it.

    The parent binds the port and hands the listening socket to the child, so there is no
    race for a free port, and a restart reuses the port. While stopped, it refuses.
    """

    def __init__(
        self,
        *,
        model: str = "standin-model",
        ttft_ms: float = 0.0,
        tpot_ms: float = 0.0,
        max_num_seqs: int = 256,
        max_model_len: int = 2048,
        embeddings: bool = False,
        fault: str | None = None,
        seed: int | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 20.0,
    ) -> None:
        self.host, self.port, self._timeout = host, port, startup_timeout
        self.args = ["--model", model, "--max-model-len", str(max_model_len)]
        self.args += ["--ttft-ms", str(ttft_ms), "--tpot-ms", str(tpot_ms)]
        self.args += ["--max-num-seqs", str(max_num_seqs)]
        self.args += ["--embeddings"] if embeddings else []
        self.args += ["--fault", fault] if fault else []
        self.args += ["--seed", str(seed)] if seed is not None else []
        self.args += ["--api-key", api_key] if api_key else []
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The running stand-in's process id."""
        if self._proc is None:
            raise RuntimeError("The stand-in is not running.")
        return int(self._proc.pid)

    @property
    def base_url(self) -> str:
        """The root URL (no `/v1`): an OpenAI client wants `base_url + "/v1"`."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Start the child, on the previous port after a stop; return `base_url`."""
        if self._proc is not None:
            raise LaunchError("the stand-in engine is already running")
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            self.port = sock.getsockname()[1]
            fd = sock.fileno()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "engines.standin", "--fd", str(fd), *self.args],
                pass_fds=[fd],
                env={**os.environ, "PYTHONPATH": path},
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
            )
        self._wait_ready()
        return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline and self._proc and self._proc.poll() is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
            try:
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.02)
        output = b""
        if self._log is not None:
            self._log.seek(0)
            output = self._log.read()[-2000:]
        self.stop()
        raise LaunchError(
            f"the stand-in engine did not become ready on {self.base_url}:\n"
            + output.decode(errors="replace")
        )

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL); its port then refuses connections."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> StandinProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def run_standin(**options: Any) -> Iterator[str]:
    """Run a stand-in engine (options as for `StandinProcess`); yield its base URL."""
    with StandinProcess(**options) as process:
        yield process.base_url
