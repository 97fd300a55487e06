"""``tollgate keys``: manage API keys and teams straight in the database.

This talks to the key store's database with the gateway's own config (``-c``); the admin
HTTP API (``/admin/keys``) is the way to do the same from another machine. A new or
rotated key is printed once, on stdout; nothing else ever prints it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from gateway.cli_keys_args import (
    ConcOpt,
    ConfigOpt,
    DailyOpt,
    ExpiresOpt,
    JsonOpt,
    MetaOpt,
    ModelsOpt,
    MonthlyOpt,
    RpmOpt,
    TeamOpt,
    TotalOpt,
    TpmOpt,
    fail,
    parse_duration_s,
    parse_expiry,
    parse_limits,
    parse_meta,
    validated,
)
from gateway.cli_keys_output import limits_line, print_secret, show_key, show_team
from gateway.config import ConfigError, Settings
from gateway.db import make_engine
from gateway.errors import GatewayError
from gateway.keys import KeyCreate, KeyStore, KeyUpdate, TeamCreate, TeamUpdate

app = typer.Typer(help="Managed API keys: create, list, show, update, revoke, rotate.")
teams_app = typer.Typer(help="Teams: limits and models shared by their keys.")
app.add_typer(teams_app, name="teams")

T = TypeVar("T")


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
            raise fail(err.message) from None
        except (OperationalError, ProgrammingError) as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                raise fail(
                    "the key tables do not exist yet: run the database migrations first "
                    "(the gateway runs them at start when ledger.auto_migrate is on)"
                ) from None
            raise fail(f"database error: {type(exc).__name__}") from None
        except SQLAlchemyError as exc:
            raise fail(f"database error: {type(exc).__name__}") from None


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
    spec = validated(
        KeyCreate,
        {
            "name": name,
            "team": team,
            "models": model or None,
            "limits": parse_limits(
                rpm=rpm,
                tpm=tpm,
                concurrency=concurrency,
                budget_daily_usd=budget_daily,
                budget_monthly_usd=budget_monthly,
                budget_total_usd=budget_total,
            ),
            "expires_at": parse_expiry(expires),
            "metadata": parse_meta(meta),
        },
    )
    created = _call(config, lambda s: s.create_key(spec))
    print_secret(created.key, created, as_json)


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
            f"{limits_line(k.limits)}"
        )


@app.command("show")
def show(key_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show one key."""
    show_key(_call(config, lambda s: s.get_key(key_id)), as_json)


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
    limits = parse_limits(
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
        patch["expires_at"] = None if no_expiry else parse_expiry(expires)
    if meta:
        patch["metadata"] = parse_meta(meta)
    spec = validated(KeyUpdate, patch)
    show_key(_call(config, lambda s: s.update_key(key_id, spec)), as_json)


@app.command("revoke")
def revoke(key_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke a key: it stops working (other replicas: within auth.key_cache_ttl_s)."""
    show_key(_call(config, lambda s: s.revoke_key(key_id)), as_json)


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
    grace_s = parse_duration_s("--grace", grace) if grace is not None else 0
    created = _call(config, lambda s: s.rotate_key(key_id, grace_s=grace_s))
    print_secret(created.key, created, as_json)
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
    spec = validated(
        TeamCreate,
        {
            "name": name,
            "models": model or None,
            "limits": parse_limits(
                rpm=rpm,
                tpm=tpm,
                concurrency=concurrency,
                budget_daily_usd=budget_daily,
                budget_monthly_usd=budget_monthly,
                budget_total_usd=budget_total,
            ),
            "metadata": parse_meta(meta),
        },
    )
    show_team(_call(config, lambda s: s.create_team(spec)), as_json)


@teams_app.command("list")
def team_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List teams."""
    teams = _call(config, lambda s: s.list_teams())
    if as_json:
        typer.echo(json.dumps([t.model_dump(mode="json") for t in teams], indent=2))
        return
    for t in teams:
        show_team(t, False)


@teams_app.command("show")
def team_show(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show one team."""
    show_team(_call(config, lambda s: s.get_team(name)), as_json)


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
    limits = parse_limits(
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
        patch["metadata"] = parse_meta(meta)
    spec = validated(TeamUpdate, patch)
    show_team(_call(config, lambda s: s.update_team(name, spec)), as_json)


@teams_app.command("delete")
def team_delete(name: str, config: ConfigOpt = None) -> None:
    """Delete a team that has no active keys."""
    _call(config, lambda s: s.delete_team(name))
    typer.echo(f"deleted team {name}")
