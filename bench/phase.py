"""What one open-loop phase measured: per-request timings, statuses and error codes.

Filled by :func:`bench.loadgen.open_loop`; read by every scenario's summary and report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PhaseResult:
    """Raw timings of one open-loop phase (seconds, arrays indexed by request)."""

    target: str
    rate: float
    duration: float
    intended: np.ndarray
    sent: np.ndarray
    first: np.ndarray
    done: np.ndarray
    ok: np.ndarray
    errors: dict[str, int]
    new_connections: int
    wall_s: float
    cpu: dict[str, float] = field(default_factory=dict)
    #: HTTP status per request (0: no response); ``done`` is set for every answer.
    status: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    #: Each answer other than 200, by request: ``"<status> <OpenAI error code>"``, e.g.
    #: ``"503 gateway_overloaded"`` (the code read from the body's tail).
    codes: dict[int, str] = field(default_factory=dict)

    @property
    def start(self) -> np.ndarray:
        out: np.ndarray = np.minimum(self.intended, self.sent)
        return out

    @property
    def latency(self) -> np.ndarray:
        """Latency of the requests that succeeded."""
        out: np.ndarray = (self.done - self.start)[self.ok]
        return out

    @property
    def ttft(self) -> np.ndarray:
        out: np.ndarray = (self.first - self.start)[self.ok]
        return out

    @property
    def send_lag(self) -> np.ndarray:
        """sent - intended; negative when a request left up to a timer tick early."""
        out: np.ndarray = (self.sent - self.intended)[self.sent > 0]
        return out

    @property
    def send_rate(self) -> float:
        """Requests per second actually sent (the schedule held if this is ``rate``)."""
        sent = self.sent[self.sent > 0]
        if sent.size < 2:
            return 0.0
        return float((sent.size - 1) / (sent.max() - sent.min()))


def error_code(tail: bytes) -> str:
    """The ``"code"`` of an OpenAI error body from its last bytes (it comes last), or ``-``."""
    at = tail.rfind(b'"code":')
    if at < 0:
        return "-"
    value = tail[at + 7 :].lstrip().split(b"}", 1)[0].strip().strip(b'"')
    return value.decode("ascii", "replace") or "-"
