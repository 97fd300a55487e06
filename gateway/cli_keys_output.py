"""How ``tollgate keys`` prints keys, teams and a new secret (text or JSON)."""

from __future__ import annotations

import json

import typer
from pydantic import BaseModel

from gateway.keys import KeyInfo, TeamInfo


def limits_line(limits: BaseModel) -> str:
    parts = [f"{k}={v}" for k, v in limits.model_dump().items() if v is not None]
    return ", ".join(parts) or "unlimited"


def show_key(info: KeyInfo, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info.model_dump(mode="json", exclude={"key"}), indent=2))
        return
    state = "active" if info.active else ("revoked" if info.revoked_at else "expired")
    typer.echo(f"{info.id}  {info.prefix}…  {info.name}  [{state}]")
    typer.echo(f"  team:    {info.team or '-'}")
    typer.echo(f"  models:  {', '.join(info.models) if info.models is not None else 'all'}")
    typer.echo(f"  limits:  {limits_line(info.limits)}")
    if info.expires_at:
        typer.echo(f"  expires: {info.expires_at.isoformat()}")
    if info.previous_valid_until:
        typer.echo(f"  old secret works until: {info.previous_valid_until.isoformat()}")
    if info.metadata:
        typer.echo(f"  meta:    {json.dumps(info.metadata)}")


def show_team(info: TeamInfo, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info.model_dump(mode="json"), indent=2))
        return
    typer.echo(f"{info.name}")
    typer.echo(f"  models:  {', '.join(info.models) if info.models is not None else 'all'}")
    typer.echo(f"  limits:  {limits_line(info.limits)}")


def print_secret(key: str, info: KeyInfo, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"key": key, **info.model_dump(mode="json", exclude={"key"})}))
    else:
        typer.echo(key)
        typer.echo(f"id {info.id}, prefix {info.prefix}", err=True)
    typer.echo("Store this key now: it is shown only once.", err=True)
