"""Settings of the gateway's listeners and of who may call it: ``server`` and ``auth``."""

from __future__ import annotations

from pydantic import Field, SecretStr

from gateway.config.base import Section


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    #: Serve /admin on its own listener when set (recommended in production).
    admin_port: int | None = Field(None, ge=1, le=65535)
    admin_host: str = "127.0.0.1"
    #: Worker processes on this host, sharing ``port`` (see gateway/workers.py); more
    #: than one needs ``quotas.backend: redis``.
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_messages: int = Field(2048, ge=1)
    max_n: int = Field(16, ge=1)
    #: Upper bound on max_tokens a client may ask for (and the default when absent).
    max_tokens_cap: int = Field(8192, ge=1)
    drain_seconds: float = Field(30.0, ge=0)
    #: After SIGTERM, keep serving this long with readiness 503 (so load balancers stop
    #: sending here) before the listener closes and the drain starts.
    unready_seconds: float = Field(0.0, ge=0)
    keepalive_seconds: float = Field(15.0, gt=0)
    #: Overload control, per worker (gateway/request/overload.py): past either limit a
    #: generation request gets 503 + Retry-After at once, from the HTTP protocol before
    #: it becomes a task (gateway/api/shedding.py). In flight: this worker's requests
    #: that are tasks and not done, those still waiting for the event loop included.
    max_in_flight: int = Field(1024, ge=1)
    #: Event-loop lag, sustained over 60 ms, that means "saturated"; 0 turns it off.
    max_loop_lag_ms: float = Field(250.0, ge=0)
    #: Client limits (gateway/api/connections.py): a request's headers must arrive
    #: within header_timeout_s of its first byte and its body within body_timeout_s
    #: (else 408); a connection idle this long is closed; past max_connections a new
    #: connection is closed at once; a stream whose client reads nothing for
    #: send_timeout_s is ended (billed as a hang-up).
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    idle_connection_s: float = Field(75.0, gt=0)
    max_connections: int = Field(4096, ge=1)
    send_timeout_s: float = Field(30.0, gt=0)
    log_level: str = "INFO"
    access_log: bool = True


class KeyLimits(Section):
    """Limits of a key declared in config; absent or ``null`` means unlimited."""

    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    concurrency: int | None = Field(None, ge=0)
    budget_daily_usd: float | None = Field(None, ge=0)
    budget_monthly_usd: float | None = Field(None, ge=0)
    budget_total_usd: float | None = Field(None, ge=0)


class StaticKey(Section):
    key: SecretStr
    name: str = "static"
    team: str | None = None
    models: list[str] | None = None
    limits: KeyLimits = Field(default_factory=lambda: KeyLimits())


class AuthSettings(Section):
    #: Client keys from config (used when no key store is configured, and in tests).
    static_keys: list[StaticKey] = Field(default_factory=list)
    #: Token for /admin; distinct from every client key.
    admin_token: SecretStr | None = None
    #: Use the managed key store (database) in addition to static keys.
    key_store: bool = True
    #: Key store database; defaults to ``ledger.url`` (same database as the ledger).
    database_url: str | None = None
    #: How long a looked-up key stays cached (bounds how late a revocation takes effect).
    key_cache_ttl_s: float = Field(10.0, ge=0)
    key_cache_size: int = Field(10_000, ge=1)
    #: Wrong admin tokens from one address within ``admin_lockout_s`` before it is locked
    #: out (429 + Retry-After) of the admin API and dashboard for the rest of the window.
    admin_max_failures: int = Field(10, ge=1)
    admin_lockout_s: float = Field(300.0, gt=0)
