"""Settings of what requests cost and who pays: ``quotas``, ``ledger`` and ``pricing``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from gateway.config.base import Section


class QuotaSettings(Section):
    #: Off: no limits are enforced and no spend is counted (benchmarks, trusted setups).
    enabled: bool = True
    backend: Literal["local", "redis"] = "local"
    redis_url: SecretStr | None = None
    redis_timeout_s: float = Field(0.25, gt=0)
    reservation_ttl_s: float = Field(900.0, gt=0)
    #: Failure policy per limit kind when the quota store is unreachable.
    on_store_error_budgets: Literal["fail_closed", "fail_open"] = "fail_closed"
    on_store_error_rates: Literal["fail_closed", "local", "fail_open"] = "local"
    #: End a stream whose key runs out of budget part-way.
    cut_stream_on_budget: bool = True
    #: Replicas sharing the limit, used to size the local fallback limiter.
    replicas: int = Field(1, ge=1)
    #: Quota calls waiting on Redis per gateway process (one multiplexed connection),
    #: beyond which a call fails at once as if Redis were unreachable.
    redis_max_in_flight: int = Field(4096, ge=1)
    #: Prefix of every Redis key the quota store writes.
    redis_prefix: str = Field("tg:q:", pattern=r"^[A-Za-z0-9_.:-]{0,32}$")
    #: Breaker on the Redis client: open after this many consecutive failures...
    breaker_failures: int = Field(3, ge=1)
    #: ...for this long, then let one probe through.
    breaker_open_s: float = Field(2.0, gt=0)
    #: Settlements queued for Redis (sent off the request path, kept while it is
    #: unreachable, replayed when it is back); the oldest are dropped beyond this.
    pending_settles_max: int = Field(10_000, ge=1)

    @model_validator(mode="after")
    def _redis_url(self) -> QuotaSettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("quotas.backend: redis needs quotas.redis_url")
        if self.redis_url is not None:
            from gateway.quotas.urls import parse_url  # the one parser of Redis URLs

            try:
                parse_url(self.redis_url.get_secret_value())
            except ValueError as exc:  # the message never repeats the URL (it may hold a password)
                raise ValueError(f"quotas.redis_url: {exc}") from None
        return self


def data_dir() -> Path:
    """Where local data goes unless the config says otherwise: ``$XDG_DATA_HOME/tollgate``
    (``~/.local/share/tollgate``), which any user can create."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "tollgate"


class LedgerSettings(Section):
    url: str = Field(default_factory=lambda: f"sqlite:///{data_dir() / 'ledger.db'}")
    enabled: bool = True
    batch_size: int = Field(500, ge=1)
    flush_interval_s: float = Field(0.5, gt=0)
    queue_max: int = Field(100_000, ge=100)
    spill_dir: str = Field(default_factory=lambda: str(data_dir() / "spill"))
    #: Run the Alembic migrations (upgrade head) when the writer first reaches the database.
    auto_migrate: bool = True
    #: Longest wait between attempts to reach a database that is down.
    retry_max_s: float = Field(5.0, gt=0)
    #: Bound on the flush at shutdown; what is left goes to the spill file.
    shutdown_timeout_s: float = Field(10.0, gt=0)
    #: Write each record to a journal in ``spill_dir`` before it waits in memory, so a
    #: killed process (SIGKILL, OOM) loses none (see gateway/ledger/journal.py).
    journal: bool = True
    #: Accept a SQLite ledger with ``quotas.backend: redis``. Each process then keeps its
    #: own ledger, and a Redis that comes back empty gets back only the spend of the
    #: replica that restores it (gateway/quotas/fallback.py): budgets may be overspent.
    partial_restore_ok: bool = False

    @property
    def per_process(self) -> bool:
        """A ledger only this host's processes write (SQLite), not one every replica shares."""
        return self.enabled and self.url.startswith("sqlite")


class PricingSettings(Section):
    file: str = "configs/prices.yaml"
    #: Expose cost to clients.
    cost_header: bool = False
    cost_in_usage: bool = False
