"""``tollgate keys``: manage API keys and teams straight in the database.

This talks to the key store's database with the gateway's own config (``-c``); the admin
HTTP API (``/admin/keys``) is the way to do the same from another machine. A new or
rotated key is printed once, on stdout; nothing else ever prints it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from gateway.config import ConfigError, Settings
from gateway.db import make_engine
from gateway.errors import GatewayError
from gateway.keys import (
    LIMIT_FIELDS,
    KeyCreate,
    KeyInfo,
    KeyStore,
    KeyUpdate,
    TeamCreate,
    TeamInfo,
    TeamUpdate,
)

app = typer.Typer(help="Managed API keys: create, list, show, update, revoke, rotate.")
teams_app = typer.Typer(help="Teams: limits and models shared by their keys.")
app.add_typer(teams_app, name="teams")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (default: $TOLLGATE_CONFIG)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TeamOpt = Annotated[str | None, typer.Option("--team", help="Team name.")]
ModelsOpt = Annotated[
    list[str] | None, typer.Option("--model", "-m", help="Allowed model (repeat for several).")
]
MetaOpt = Annotated[
    list[str] | None, typer.Option("--meta", help="Metadata KEY=VALUE (repeat for several).")
]
_LIMIT_HELP = "'none' removes the limit."
RpmOpt = Annotated[str | None, typer.Option("--rpm", help=f"Requests/minute. {_LIMIT_HELP}")]
TpmOpt = Annotated[str | None, typer.Option("--tpm", help=f"Tokens/minute. {_LIMIT_HELP}")]
ConcOpt = Annotated[
    str | None, typer.Option("--concurrency", help=f"Requests in flight. {_LIMIT_HELP}")
]
DailyOpt = Annotated[str | None, typer.Option("--budget-daily", help="USD per UTC day.")]
MonthlyOpt = Annotated[str | None, typer.Option("--budget-monthly", help="USD per UTC month.")]
TotalOpt = Annotated[str | None, typer.Option("--budget-total", help="USD in total.")]
ExpiresOpt = Annotated[
    str | None,
    typer.Option("--expires", help="ISO time (UTC if no zone) or a duration: 30d, 12h, 90m."),
]

_DURATION = re.compile(r"^(\d+)([dhm])$")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@contextmanager
def _store(config: Path | None) -> Iterator[KeyStore]:
    try:
        settings = Settings.load(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    engine = make_engine(settings.auth.database_url or settings.ledger.url)
    try:
        yield KeyStore(engine, known_models={m.name for m in settings.models} or None)
    finally:
        engine.dispose()


def _call(config: Path | None, op: Callable[[KeyStore], T]) -> T:
    with _store(config) as store:
        try:
            return op(store)
        except GatewayError as err:
            raise _fail(err.message) from None
        except (OperationalError, ProgrammingError) as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                raise _fail(
                    "the key tables do not exist yet: run the database migrations first "
                    "(the gateway runs them at start when ledger.auto_migrate is on)"
                ) from None
            raise _fail(f"database error: {type(exc).__name__}") from None
        except SQLAlchemyError as exc:
            raise _fail(f"database error: {type(exc).__name__}") from None


def _model(cls: type[M], data: dict[str, Any]) -> M:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise _fail(problems) from None


def _limits(**values: str | None) -> dict[str, Any]:
    """Only the limits given; 'none' clears one."""
    out: dict[str, Any] = {}
    for name, raw in values.items():
        if raw is None:
            continue
        out[name] = None if raw.strip().lower() in ("none", "unlimited", "") else raw.strip()
    assert set(out) <= set(LIMIT_FIELDS)
    return out


def _delta(raw: str) -> dt.timedelta | None:
    m = _DURATION.match(raw.strip())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return {
        "d": dt.timedelta(days=n),
        "h": dt.timedelta(hours=n),
        "m": dt.timedelta(minutes=n),
    }[unit]


def _duration_s(option: str, raw: str) -> int:
    delta = _delta(raw)
    if delta is None:
        raise _fail(f"{option}: not a duration like 30d, 12h or 90m: {raw!r}")
    return int(delta.total_seconds())


def _expiry(raw: str | None) -> dt.datetime | None:
    if raw is None:
        return None
    delta = _delta(raw)
    if delta is not None:
        return dt.datetime.now(dt.UTC) + delta
    try:
        t = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise _fail(f"--expires: not an ISO time or a duration: {raw!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _meta(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise _fail(f"--meta expects KEY=VALUE, got {item!r}")
        out[k] = v
    return out


def _limits_line(limits: BaseModel) -> str:
    parts = [f"{k}={v}" for k, v in limits.model_dump().items() if v is not None]
    return ", ".join(parts) or "unlimited"


def _show_key(info: KeyInfo, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info.model_dump(mode="json", exclude={"key"}), indent=2))
        return
    state = "active" if info.active else ("revoked" if info.revoked_at else "expired")
    typer.echo(f"{info.id}  {info.prefix}…  {info.name}  [{state}]")
    typer.echo(f"  team:    {info.team or '-'}")
    typer.echo(f"  models:  {', '.join(info.models) if info.models is not None else 'all'}")
    typer.echo(f"  limits:  {_limits_line(info.limits)}")
    if info.expires_at:
        typer.echo(f"  expires: {info.expires_at.isoformat()}")
    if info.previous_valid_until:
        typer.echo(f"  old secret works until: {info.previous_valid_until.isoformat()}")
    if info.metadata:
        typer.echo(f"  meta:    {json.dumps(info.metadata)}")


def _show_team(info: TeamInfo, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info.model_dump(mode="json"), indent=2))
        return
    typer.echo(f"{info.name}")
    typer.echo(f"  models:  {', '.join(info.models) if info.models is not None else 'all'}")
    typer.echo(f"  limits:  {_limits_line(info.limits)}")


def _print_secret(key: str, info: KeyInfo, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"key": key, **info.model_dump(mode="json", exclude={"key"})}))
    else:
        typer.echo(key)
        typer.echo(f"id {info.id}, prefix {info.prefix}", err=True)
    typer.echo("Store this key now: it is shown only once.", err=True)


# ---------------------------------------------------------------------- keys


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A name for people (e.g. the service using it).")],
    config: ConfigOpt = None,
    team: TeamOpt = None,
    model: ModelsOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    concurrency: ConcOpt = None,
    budget_daily: DailyOpt = None,
    budget_monthly: MonthlyOpt = None,
    budget_total: TotalOpt = None,
    expires: ExpiresOpt = None,
    meta: MetaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print it (once)."""
    spec = _model(
        KeyCreate,
        {
            "name": name,
            "team": team,
            "models": model or None,
            "limits": _limits(
                rpm=rpm,
                tpm=tpm,
                concurrency=concurrency,
                budget_daily_usd=budget_daily,
                budget_monthly_usd=budget_monthly,
                budget_total_usd=budget_total,
            ),
            "expires_at": _expiry(expires),
            "metadata": _meta(meta),
        },
    )
    created = _call(config, lambda s: s.create_key(spec))
    _print_secret(created.key, created, as_json)


@app.command("list")
def list_(
    config: ConfigOpt = None,
    team: TeamOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List keys (prefix, name, team, limits); never the keys themselves."""
    keys = _call(config, lambda s: s.list_keys(team=team, include_revoked=all_))
    if as_json:
        typer.echo(json.dumps([k.model_dump(mode="json") for k in keys], indent=2))
        return
    for k in keys:
        state = "active" if k.active else ("revoked" if k.revoked_at else "expired")
        typer.echo(
            f"{k.id}  {k.prefix}…  {k.name}  team={k.team or '-'}  [{state}]  "
            f"{_limits_line(k.limits)}"
        )


@app.command("show")
def show(key_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show one key."""
    _show_key(_call(config, lambda s: s.get_key(key_id)), as_json)


@app.command("update")
def update(
    key_id: str,
    config: ConfigOpt = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    team: TeamOpt = None,
    no_team: Annotated[
        bool, typer.Option("--no-team", help="Take the key out of its team.")
    ] = False,
    model: ModelsOpt = None,
    all_models: Annotated[
        bool, typer.Option("--all-models", help="Lift the key's own model restriction.")
    ] = False,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    concurrency: ConcOpt = None,
    budget_daily: DailyOpt = None,
    budget_monthly: MonthlyOpt = None,
    budget_total: TotalOpt = None,
    expires: ExpiresOpt = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry")] = False,
    meta: MetaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a key; options not given stay as they are."""
    patch: dict[str, Any] = {}
    if name is not None:
        patch["name"] = name
    if team is not None or no_team:
        patch["team"] = None if no_team else team
    if model or all_models:
        patch["models"] = None if all_models else model
    limits = _limits(
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
        budget_daily_usd=budget_daily,
        budget_monthly_usd=budget_monthly,
        budget_total_usd=budget_total,
    )
    if limits:
        patch["limits"] = limits
    if expires is not None or no_expiry:
        patch["expires_at"] = None if no_expiry else _expiry(expires)
    if meta:
        patch["metadata"] = _meta(meta)
    spec = _model(KeyUpdate, patch)
    _show_key(_call(config, lambda s: s.update_key(key_id, spec)), as_json)


@app.command("revoke")
def revoke(key_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke a key: it stops working (other replicas: within auth.key_cache_ttl_s)."""
    _show_key(_call(config, lambda s: s.revoke_key(key_id)), as_json)


@app.command("rotate")
def rotate(
    key_id: str,
    grace: Annotated[
        str | None,
        typer.Option(
            "--grace",
            help="Keep the old secret working this much longer (30d, 12h, 90m; at most 30d) "
            "while clients move to the new one. Default: it stops at once.",
        ),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give a key a new secret (same id, limits and spend); the old one stops working."""
    grace_s = _duration_s("--grace", grace) if grace is not None else 0
    created = _call(config, lambda s: s.rotate_key(key_id, grace_s=grace_s))
    _print_secret(created.key, created, as_json)
    if created.previous_valid_until is not None and not as_json:
        until = created.previous_valid_until.isoformat()
        typer.echo(f"The old secret works until {until}.", err=True)


# ---------------------------------------------------------------------- teams


@teams_app.command("create")
def team_create(
    name: str,
    config: ConfigOpt = None,
    model: ModelsOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    concurrency: ConcOpt = None,
    budget_daily: DailyOpt = None,
    budget_monthly: MonthlyOpt = None,
    budget_total: TotalOpt = None,
    meta: MetaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a team."""
    spec = _model(
        TeamCreate,
        {
            "name": name,
            "models": model or None,
            "limits": _limits(
                rpm=rpm,
                tpm=tpm,
                concurrency=concurrency,
                budget_daily_usd=budget_daily,
                budget_monthly_usd=budget_monthly,
                budget_total_usd=budget_total,
            ),
            "metadata": _meta(meta),
        },
    )
    _show_team(_call(config, lambda s: s.create_team(spec)), as_json)


@teams_app.command("list")
def team_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List teams."""
    teams = _call(config, lambda s: s.list_teams())
    if as_json:
        typer.echo(json.dumps([t.model_dump(mode="json") for t in teams], indent=2))
        return
    for t in teams:
        _show_team(t, False)


@teams_app.command("show")
def team_show(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show one team."""
    _show_team(_call(config, lambda s: s.get_team(name)), as_json)


@teams_app.command("update")
def team_update(
    name: str,
    config: ConfigOpt = None,
    model: ModelsOpt = None,
    all_models: Annotated[bool, typer.Option("--all-models")] = False,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    concurrency: ConcOpt = None,
    budget_daily: DailyOpt = None,
    budget_monthly: MonthlyOpt = None,
    budget_total: TotalOpt = None,
    meta: MetaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a team; its keys' effective limits follow at once."""
    patch: dict[str, Any] = {}
    if model or all_models:
        patch["models"] = None if all_models else model
    limits = _limits(
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
        budget_daily_usd=budget_daily,
        budget_monthly_usd=budget_monthly,
        budget_total_usd=budget_total,
    )
    if limits:
        patch["limits"] = limits
    if meta:
        patch["metadata"] = _meta(meta)
    spec = _model(TeamUpdate, patch)
    _show_team(_call(config, lambda s: s.update_team(name, spec)), as_json)


@teams_app.command("delete")
def team_delete(name: str, config: ConfigOpt = None) -> None:
    """Delete a team that has no active keys."""
    _call(config, lambda s: s.delete_team(name))
    typer.echo(f"deleted team {name}")
