"""``tollgate reconcile``: the ledger against the quota store's spend counters, read here
(Redis) or asked of a running gateway (``--gateway``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Annotated, Any

import typer

from gateway.cli_finance_common import ConfigOpt, DbOpt, fail, load_settings
from gateway.config import Settings

#: Builds the quota store's spend counters for `tollgate reconcile` (wired by the CLI).
CountersFactory = Callable[[Settings], Any]


def make_reconcile(counters_factory: CountersFactory | None) -> Callable[..., None]:
    def reconcile(
        period: Annotated[str, typer.Option(help="day or month (current, UTC).")] = "day",
        tolerance_nusd: Annotated[
            int, typer.Option(min=0, help="Allowed difference per key, nano-USD.")
        ] = 0,
        gateway: Annotated[
            str | None,
            typer.Option(
                help="Ask a running gateway (its /admin/reconcile), e.g. for local quotas."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        db: DbOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Compare the ledger with the quota store's spend counters; exit 1 on a mismatch."""
        if period not in ("day", "month"):
            raise fail("--period must be day or month")
        settings = load_settings(config)
        if gateway is not None:
            data = _reconcile_remote(gateway, settings, period, tolerance_nusd)
        else:
            data = _reconcile_local(settings, db, counters_factory, period, tolerance_nusd)
        if as_json:
            typer.echo(json.dumps(data, indent=2))
        else:
            _print_reconciliation(data)
        if not data["ok"]:
            raise typer.Exit(1)

    return reconcile


def _reconcile_remote(base: str, settings: Settings, period: str, tolerance: int) -> dict[str, Any]:
    import httpx

    token = os.environ.get("TOLLGATE_ADMIN_TOKEN") or (
        settings.auth.admin_token.get_secret_value() if settings.auth.admin_token else None
    )
    if not token:
        raise fail("no admin token: set auth.admin_token or $TOLLGATE_ADMIN_TOKEN")
    try:
        resp = httpx.get(
            base.rstrip("/") + "/admin/reconcile",
            params={"period": period, "tolerance_nusd": tolerance},
            headers={"authorization": f"Bearer {token}"},
            timeout=60,
        )
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the gateway: {type(exc).__name__}", 1) from None
    if resp.status_code != 200:
        raise fail(f"the gateway answered {resp.status_code}: {resp.text[:300]}", 1)
    data: dict[str, Any] = resp.json()
    return data


def _reconcile_local(
    settings: Settings,
    db: str | None,
    factory: CountersFactory | None,
    period: str,
    tolerance: int,
) -> dict[str, Any]:
    from gateway.ledger.reconcile import reconcile
    from gateway.ledger.reports import Reports
    from gateway.ledger.store import LedgerStore, LedgerUnavailableError

    counters = (factory or default_counters)(settings)
    if counters is None:
        raise fail(
            "the local quota store's counters live in the gateway process: "
            "use --gateway http://HOST:PORT"
        )
    store = LedgerStore.from_url(db or settings.ledger.url)

    async def run() -> dict[str, Any]:
        try:
            result = await reconcile(
                Reports(store.engine),
                counters,
                "day" if period == "day" else "month",
                tolerance_nusd=tolerance,
            )
            return result.to_dict()
        finally:
            close = getattr(counters, "aclose", None)
            if close is not None:
                await close()

    try:
        return asyncio.run(run())
    except LedgerUnavailableError as exc:
        raise fail(exc.message, 1) from None
    finally:
        store.dispose()


def default_counters(settings: Settings) -> Any:
    """The Redis quota store's counters (shared, readable from here); None for local."""
    if settings.quotas.backend != "redis":
        return None
    from gateway.quotas.redis import RedisQuotaStore

    return RedisQuotaStore(settings.quotas)


def _print_reconciliation(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from gateway.ledger.money import format_usd

    table = Table(title=f"Reconciliation, {data['period']} from {data['start']} to {data['end']}")
    for name in ("key id", "ledger", "counters", "difference", ""):
        table.add_column(name, justify="left" if name == "key id" else "right")
    bad = set(data["mismatches"])
    for k in data["keys"]:
        table.add_row(
            k["key_id"],
            format_usd(k["ledger_nusd"], 9),
            format_usd(k["counter_nusd"], 9),
            format_usd(k["difference_nusd"], 9),
            "MISMATCH" if k["key_id"] in bad else "ok",
            style="red" if k["key_id"] in bad else None,
        )
    console = Console()
    console.print(table)
    verdict = (
        "ok: the counters match the ledger"
        if data["ok"]
        else (f"MISMATCH on {len(bad)} key(s) (tolerance {data['tolerance_nusd']} nano-USD)")
    )
    console.print(verdict)
