"""Admin API root: every /admin route requires the admin token (never a client key).

Feature modules add their own routers under this prefix with :data:`AdminAuth`.

A browser cannot send a bearer header when it loads a page, so the dashboard's login
(``gateway.api.admin_reports``) exchanges the admin token for a session cookie:
HttpOnly, SameSite=Strict, scoped to /admin, expiring, and an HMAC keyed by the admin
token (changing the token ends every session; the cookie never holds the token). The
cookie is accepted for reading only (GET/HEAD), so a forged cross-site request can
never change anything even if the browser sent it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from gateway.api.docs import errors
from gateway.auth import check_admin_token
from gateway.errors import AuthenticationError
from gateway.services import services

SESSION_COOKIE = "tollgate_admin"
SESSION_TTL_S = 12 * 3600
_SAFE_METHODS = frozenset({"GET", "HEAD"})


def _session_mac(admin_token: str, expires: int) -> str:
    msg = f"tollgate-admin-session:{expires}".encode()
    return hmac.new(admin_token.encode(), msg, hashlib.sha256).hexdigest()


def issue_session(admin_token: str, now: float | None = None) -> str:
    """A cookie value proving the admin token was presented, valid SESSION_TTL_S."""
    expires = int(now if now is not None else time.time()) + SESSION_TTL_S
    return f"{expires}.{_session_mac(admin_token, expires)}"


def session_valid(value: str, admin_token: str, now: float | None = None) -> bool:
    expires, _, mac = value.partition(".")
    if not expires.isdigit() or len(expires) > 12:
        return False
    if int(expires) < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(mac, _session_mac(admin_token, int(expires)))


def has_admin_session(request: Request) -> bool:
    """A valid session cookie on a read-only request."""
    token = services(request).settings.auth.admin_token
    cookie = request.cookies.get(SESSION_COOKIE)
    return (
        token is not None
        and cookie is not None
        and request.method in _SAFE_METHODS
        and session_valid(cookie, token.get_secret_value())
    )


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def require_admin(request: Request) -> None:
    svc = services(request)
    token = svc.settings.auth.admin_token
    header = request.headers.get("authorization")
    if header is None and has_admin_session(request):
        return
    client = client_address(request)
    svc.admin_failures.check(client)
    try:
        check_admin_token(header, token.get_secret_value() if token else None)
    except AuthenticationError:
        svc.admin_failures.failed(client)
        raise


AdminAuth = Annotated[None, Depends(require_admin)]

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=errors(401, 429),
)


@router.get("/engines")
async def engines(request: Request) -> dict[str, object]:
    pool = services(request).pool
    return {
        "engines": [
            {
                "name": e.name,
                "tier": e.tier,
                "model": e.model,
                "healthy": e.healthy,
                "in_flight": e.in_flight,
                "queue": pool.queue_depth(e),
                "waiting": e.waiting,
                "running": e.running,
                "kv_cache_usage": e.kv_cache_usage,
            }
            for e in pool.engines.values()
        ]
    }
