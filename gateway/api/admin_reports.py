"""Finance endpoints: reports (JSON/CSV), summary, reconciliation, and the dashboard.

``router`` carries the admin dependency (bearer token, or the session cookie on reads).
``pages`` holds the browser pages, which answer an unauthenticated visit with the login
form instead of a JSON 401: ``/admin/login`` exchanges the admin token for the session
cookie, and ``/admin/dashboard?token=...`` does the same once, then redirects to drop
the token from the address bar and history.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlencode

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.api.admin import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    client_address,
    has_admin_session,
    issue_session,
    require_admin,
)
from gateway.api.docs import errors
from gateway.errors import (
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)
from gateway.ledger.dashboard import DashboardData, default_range, login_page, render
from gateway.ledger.periods import parse_when
from gateway.ledger.reconcile import SpendCounters, reconcile
from gateway.ledger.report_format import to_csv, to_json
from gateway.ledger.report_types import ReportQuery
from gateway.ledger.service import Ledger
from gateway.services import services

router = APIRouter(
    prefix="/admin",
    tags=["admin", "finance"],
    dependencies=[Depends(require_admin)],
    responses=errors(400, 401, 404, 429, 503),
)
pages = APIRouter(prefix="/admin", tags=["admin", "finance"])
_REDIRECT: dict[int | str, dict[str, Any]] = {
    303: {"description": "To the dashboard or the login page."}
}
_HTML: dict[str, Any] = {"content": {"text/html": {}}}
_LOGIN_REFUSED: dict[int | str, dict[str, Any]] = {
    401: {"description": "A wrong token: the login page again.", **_HTML},
    429: {"description": "Too many wrong tokens: the login page again.", **_HTML},
}
#: Pages answer a visit without credentials with the login form, not a 401.
_OPEN: dict[str, Any] = {"security": [{"adminToken": []}, {"adminSession": []}, {}]}

_LOGIN_BODY_MAX = 4096


def ledger_of(request: Request) -> Ledger:
    ledger = services(request).ledger
    if not isinstance(ledger, Ledger):
        raise ServiceUnavailableError(
            "The ledger is disabled on this gateway (ledger.enabled).", code="ledger_disabled"
        )
    return ledger


def _bounds(start: str | None, end: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    try:
        return (
            parse_when(start) if start else None,
            parse_when(end, end=True) if end else None,
        )
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="start" if start else "end") from None


def _query(group_by: list[str], start: str | None, end: str | None, **filters: Any) -> ReportQuery:
    groups = tuple(g.strip() for item in group_by for g in item.split(",") if g.strip())
    lo, hi = _bounds(start, end)
    try:
        return ReportQuery(groups, lo, hi, **filters)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="group_by") from None


@router.get(
    "/reports",
    responses={
        200: {"content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}}
    },
)
async def reports(
    request: Request,
    group_by: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies defaults
    start: str | None = None,
    end: str | None = None,
    key_id: str | None = None,
    team: str | None = None,
    tier: str | None = None,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """Spend grouped by key, team, model, tier, day, month... over ``[start, end]``."""
    q = _query(group_by, start, end, key_id=key_id, team=team, tier=tier, limit=limit)
    report = await asyncio.to_thread(ledger_of(request).reports.report, q)
    if format == "csv":
        name = "-".join(["tollgate-report", *q.group_by])
        return Response(
            to_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}.csv"'},
        )
    return Response(to_json(report), media_type="application/json")


@router.get("/reports/summary")
async def summary(request: Request, start: str | None = None, end: str | None = None) -> Response:
    """Totals, by tier and status, top keys, price versions used, and the writer's state."""
    ledger = ledger_of(request)
    lo, hi = _bounds(start, end)

    def gather() -> dict[str, Any]:
        r = ledger.reports
        total = r.report(ReportQuery((), lo, hi))
        return {
            "start": lo.isoformat() if lo else None,
            "end": hi.isoformat() if hi else None,
            "currency": "USD",
            "totals": total.totals.to_dict(),
            "by_tier": _rows(r.report(ReportQuery(("tier",), lo, hi))),
            "by_status": _rows(r.report(ReportQuery(("status",), lo, hi))),
            "top_keys": _rows(r.report(ReportQuery(("key", "team"), lo, hi, limit=5))),
            "price_versions": r.price_versions(lo, hi),
        }

    body = await asyncio.to_thread(gather)
    body["writer"] = ledger.writer.stats().to_dict()
    return Response(orjson.dumps(body, option=orjson.OPT_INDENT_2), media_type="application/json")


def _rows(report: Any) -> list[dict[str, Any]]:
    return [{**r.group, **r.totals.to_dict()} for r in report.rows]


@router.get("/reconcile")
async def reconcile_spend(
    request: Request,
    period: Literal["day", "month"] = "day",
    tolerance_nusd: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """The quota store's spend counters against the ledger, per key, this day or month."""
    svc = services(request)
    counters: Any = svc.quotas
    if not hasattr(counters, "spend_totals"):
        raise NotFoundError(
            "This gateway's quota store keeps no spend counters.", code="no_spend_counters"
        )
    ledger = ledger_of(request)
    await ledger.writer.flush(timeout=10)  # what this process settled is in the ledger too
    typed: SpendCounters = counters
    result = await reconcile(ledger.reports, typed, period, tolerance_nusd=tolerance_nusd)
    return result.to_dict()


# ---------------------------------------------------------------------------- pages


def _token_matches(request: Request, candidate: str) -> bool:
    """Check a token typed into a page; failures count towards the lock-out."""
    svc = services(request)
    client = client_address(request)
    svc.admin_failures.check(client)
    expected = svc.settings.auth.admin_token
    # Compare digests: constant time whatever the candidate's length.
    ok = (
        expected is not None
        and bool(candidate)
        and hmac.compare_digest(
            hashlib.sha256(candidate.encode()).digest(),
            hashlib.sha256(expected.get_secret_value().encode()).digest(),
        )
    )
    if not ok:
        svc.admin_failures.failed(client)
    return ok


def _login_refused(
    request: Request, token: str, target: str = "/admin/dashboard"
) -> HTMLResponse | None:
    """The login page again, with why (a wrong token, or too many of them); None if ok."""
    try:
        if _token_matches(request, token):
            return None
    except RateLimitError as err:
        return HTMLResponse(login_page(err.message, target), status_code=429, headers=err.headers)
    return HTMLResponse(login_page("That admin token is not valid.", target), status_code=401)


def _with_session(request: Request, response: Response) -> Response:
    token = services(request).settings.auth.admin_token
    assert token is not None
    response.set_cookie(
        SESSION_COOKIE,
        issue_session(token.get_secret_value()),
        max_age=SESSION_TTL_S,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _safe_next(value: str | None) -> str:
    # Only our own admin pages: never an open redirect to another site.
    if value and value.startswith("/admin/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/admin/dashboard"


@pages.get(
    "/dashboard",
    response_class=HTMLResponse,
    responses={**_REDIRECT, **_LOGIN_REFUSED, **errors(400, 503)},
    openapi_extra=_OPEN,
)
async def dashboard(
    request: Request,
    start: str | None = None,
    end: str | None = None,
    token: str | None = None,
) -> Response:
    """Spend over time, by key, by model and tier, savings and top spenders."""
    if token is not None:
        refused = _login_refused(request, token)
        if refused is not None:
            return refused
        params = urlencode({k: v for k, v in (("start", start), ("end", end)) if v})
        target = "/admin/dashboard" + (f"?{params}" if params else "")
        return _with_session(request, RedirectResponse(target, status_code=303))
    if request.headers.get("authorization") is not None:
        await require_admin(request)
    elif not has_admin_session(request):
        return RedirectResponse("/admin/login", status_code=303)
    ledger = ledger_of(request)
    lo, hi = _bounds(start, end)
    d_lo, d_hi = default_range(dt.datetime.now(dt.UTC))
    hi = hi or d_hi
    lo = lo or hi - (d_hi - d_lo)
    if hi <= lo:
        raise InvalidRequestError("end must be after start", param="end")
    writer = ledger.writer.stats().to_dict()
    data = await asyncio.to_thread(DashboardData.gather, ledger.reports, lo, hi, writer)
    return HTMLResponse(render(data), headers={"cache-control": "no-store"})


@pages.get("/login", response_class=HTMLResponse, openapi_extra={"security": []})
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return HTMLResponse(login_page(next_path=_safe_next(next)))


@pages.post(
    "/login",
    response_class=HTMLResponse,
    responses={**_REDIRECT, **_LOGIN_REFUSED, **errors(400)},
    openapi_extra={"security": []},
)
async def login(request: Request) -> Response:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _LOGIN_BODY_MAX:
            raise InvalidRequestError("The login form is too large.")
    form = parse_qs(body.decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0]
    target = _safe_next(form.get("next", [""])[0])
    refused = _login_refused(request, token, target)
    if refused is not None:
        return refused
    return _with_session(request, RedirectResponse(target, status_code=303))


@pages.get("/logout", responses=_REDIRECT, openapi_extra={"security": []})
async def logout() -> Response:
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/admin")
    return response
