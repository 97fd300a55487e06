"""One error hierarchy for the whole gateway.

Every failure the gateway reports to a client is a :class:`GatewayError`. Each class
knows its HTTP status, its OpenAI error ``type`` and a default ``code``; a single
handler (:func:`error_response`) turns any of them into OpenAI-shaped JSON::

    GatewayError
    ├── InvalidRequestError        400 invalid_request_error
    │   └── ForbiddenFieldError    400 (client tried to choose an upstream)
    ├── AuthenticationError        401 authentication_error
    ├── PermissionDeniedError      403 permission_error
    ├── NotFoundError              404 invalid_request_error / model_not_found
    ├── PayloadTooLargeError       413 invalid_request_error
    ├── RateLimitError             429 rate_limit_exceeded
    │   └── QuotaExceededError     429 insufficient_quota (budgets)
    ├── InternalError              500 server_error
    ├── UpstreamError              502 upstream_error (engine answered badly)
    ├── ServiceUnavailableError    503 service_unavailable
    │   ├── EngineUnavailableError 503 (no healthy engine / connection refused)
    │   ├── OverloadedError        503 (engine wait queue full or timed out)
    │   └── QuotaStoreUnavailable  503 (budgets fail closed)
    └── UpstreamTimeoutError       504 timeout

Errors raised by libraries underneath (httpx, redis, SQLAlchemy) are translated into
this tree at one boundary each (the engine client, the quota store, the ledger), so no
library exception or stack trace ever reaches a client.
"""

from __future__ import annotations

from typing import Any

import orjson


class GatewayError(Exception):
    """Base of every client-visible failure."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @property
    def retryable(self) -> bool:
        """Whether another engine could serve the request (used by fallback)."""
        return False


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class ForbiddenFieldError(InvalidRequestError):
    default_code = "forbidden_field"


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status_code = 403
    error_type = "permission_error"
    default_code = "model_not_allowed"


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class PayloadTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RequestTimeoutError(GatewayError):
    """The client took too long to send its request (headers or body)."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class QuotaExceededError(RateLimitError):
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class InternalError(GatewayError):
    status_code = 500
    error_type = "server_error"
    default_code = "internal_error"


class UpstreamError(GatewayError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "bad_gateway"

    @property
    def retryable(self) -> bool:
        return True


class ServiceUnavailableError(GatewayError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"


class EngineUnavailableError(ServiceUnavailableError):
    default_code = "engine_unavailable"

    @property
    def retryable(self) -> bool:
        return True


class OverloadedError(ServiceUnavailableError):
    default_code = "engine_overloaded"

    @property
    def retryable(self) -> bool:
        return True


class QuotaStoreUnavailable(ServiceUnavailableError):
    default_code = "quota_store_unavailable"


class UpstreamTimeoutError(GatewayError):
    status_code = 504
    error_type = "timeout"
    default_code = "upstream_timeout"

    @property
    def retryable(self) -> bool:
        return True


def with_retry_after(err: GatewayError, seconds: float) -> GatewayError:
    """Attach a ``Retry-After`` header (whole seconds, at least 1)."""
    err.headers["Retry-After"] = str(max(1, int(seconds + 0.999)))
    return err
