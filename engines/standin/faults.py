"""The stand-in's fault model: what goes wrong (:class:`Fault`) and when (:class:`FaultInjector`).

A `Fault` says what goes wrong; a `FaultInjector` decides, once per generation request,
whether it fires. One fault is active at a time, set at start with `--fault SPEC` and
at runtime with `POST /_standin/faults` (JSON, see :mod:`engines.standin.hooks`), which
replaces the active fault.

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

import random
from dataclasses import dataclass, fields, replace
from typing import Any

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
