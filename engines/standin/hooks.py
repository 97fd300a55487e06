"""The stand-in's test hooks: the `/_standin/*` routes and the stats they report.

`GET|POST /_standin/faults` reads or replaces the fault; `GET /_standin/stats` returns
request counts (received, in flight, completed, aborted by the client, dropped by the
`close` fault, faults injected), the scheduler's running/waiting counts, and the last
request's path, headers and body; `POST /_standin/reset` zeroes the stats and clears
the fault.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engines.standin.faults import NO_FAULT, Fault, FaultInjector

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
