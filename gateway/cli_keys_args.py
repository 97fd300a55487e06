"""``tollgate keys`` options and the parsing of their values: limits ('none' clears one),
durations, expiry times, metadata, and validation into the key store's models.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from gateway.keys import LIMIT_FIELDS

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


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def validated(cls: type[M], data: dict[str, Any]) -> M:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise fail(problems) from None


def parse_limits(**values: str | None) -> dict[str, Any]:
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


def parse_duration_s(option: str, raw: str) -> int:
    delta = _delta(raw)
    if delta is None:
        raise fail(f"{option}: not a duration like 30d, 12h or 90m: {raw!r}")
    return int(delta.total_seconds())


def parse_expiry(raw: str | None) -> dt.datetime | None:
    if raw is None:
        return None
    delta = _delta(raw)
    if delta is not None:
        return dt.datetime.now(dt.UTC) + delta
    try:
        t = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise fail(f"--expires: not an ISO time or a duration: {raw!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def parse_meta(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise fail(f"--meta expects KEY=VALUE, got {item!r}")
        out[k] = v
    return out
