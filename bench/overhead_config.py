"""The overhead scenario's settings and variants: plain data, shared by its modules.

Kept apart from :mod:`bench.overhead` so that :mod:`bench.rig` and :mod:`bench.summary`
can use them without importing the scenario (no import circle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.results import RESULTS


@dataclass(frozen=True)
class Variant:
    """One gateway configuration measured against the same engine."""

    name: str
    description: str
    stream: bool
    #: Config sections merged over the bench's base config.
    overrides: dict[str, Any] = field(default_factory=dict)
    #: The headline variants are judged against the targets; the others show a cost.
    headline: bool = False
    #: Run a redis-server (loopback, AOF fsync every second) and keep quotas there.
    redis: bool = False


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("unary", "non-streaming, access log off, ledger off", False, headline=True),
        Variant("stream", "streaming, access log off, ledger off", True, headline=True),
        Variant(
            "unary_access_log",
            "non-streaming, access log on (JSON lines to the gateway's log file)",
            False,
            {"server": {"access_log": True}},
        ),
        Variant(
            "unary_ledger",
            "non-streaming, ledger on (SQLite, batched writer)",
            False,
            {"ledger": {"enabled": True}},
        ),
        Variant(
            "unary_quotas_off",
            "non-streaming, quotas off (the reference for the quota variants)",
            False,
            {"quotas": {"enabled": False}},
        ),
        Variant(
            "unary_quotas_redis",
            "non-streaming, quotas in Redis on loopback (AOF, fsync every second)",
            False,
            redis=True,
        ),
    )
}


@dataclass(frozen=True)
class BenchConfig:
    rate: float = 300.0
    duration: float = 20.0
    warmup: float = 3.0
    blocks: int = 2
    arrivals: str = "uniform"
    ttft_ms: float = 20.0
    tpot_ms: float = 2.0
    max_tokens: int = 16
    max_num_seqs: int = 256
    pin: str = "gateway0"
    variants: tuple[str, ...] = tuple(VARIANTS)
    out_dir: Path = RESULTS
    profile: bool = False
    quick: bool = False
    #: Other processes may use at most this many cores while a variant runs.
    quiet_cores: float = 0.15
    #: How long to wait for the machine to become that quiet before each variant.
    wait_quiet_s: float = 300.0
    #: Nice value for the gateway, stand-in and load generator (None: leave as is).
    nice: int | None = None
    #: The headline variants again at these rates (how the overhead grows with load).
    extra_rates: tuple[float, ...] = ()
    #: Request rate while py-spy samples the gateway.
    profile_rate: float = 150.0
    #: Rate for the access-log and ledger variants (None: see ``healthy_rate``).
    variant_rate: float | None = None
    #: After the last request of a block is sent, wait this long for answers (then: timeout).
    drain_s: float = 30.0

    @property
    def engine_unary_ms(self) -> float:
        return self.ttft_ms + (self.max_tokens - 1) * self.tpot_ms
