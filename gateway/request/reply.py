"""A complete JSON answer as raw ASGI messages (no header object, no re-encoding)."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError

_JSON = (b"content-type", b"application/json")


class Reply:
    """A finished response: status, headers (lower-case names) and body."""

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, body: bytes, headers: dict[str, str], status_code: int = 200) -> None:
        self.body = body
        self.headers = headers
        self.status_code = status_code

    @classmethod
    def error(cls, err: GatewayError, headers: dict[str, str]) -> Reply:
        return cls(err.to_json(), headers, err.status_code)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [_JSON, (b"content-length", str(len(self.body)).encode())]
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status_code, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})
