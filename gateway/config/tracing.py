"""Settings of the request path's traces: ``tracing`` (OpenTelemetry, off by default)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator

from gateway.config.base import Section

#: Where an OTLP/HTTP collector takes traces (the path a bare ``host:port`` gets).
TRACES_PATH = "/v1/traces"


class TracingSettings(Section):
    """OpenTelemetry spans per request stage, exported over OTLP/HTTP when ``enabled``.

    Off, no tracer is built and no span is made; an incoming ``traceparent`` is still
    passed to the engine unchanged (see gateway/request/tracing.py).
    """

    enabled: bool = False
    #: The collector's OTLP/HTTP traces URL; a URL without a path gets ``/v1/traces``.
    endpoint: str = "http://127.0.0.1:4318" + TRACES_PATH
    #: Only OTLP over HTTP with protobuf bodies: the gRPC exporter (and grpcio) is not
    #: installed, to keep the gateway's dependencies small.
    protocol: Literal["http/protobuf"] = "http/protobuf"
    service_name: str = Field("tollgate", min_length=1)
    #: Share of new traces kept (a client's sampled flag decides for its own traces).
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    #: How long one export to the collector may take (it runs off the event loop).
    export_timeout_s: float = Field(10.0, gt=0)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: Any) -> Any:
        if value == "grpc":
            raise ValueError(
                "grpc is not supported (its exporter is not installed); use http/protobuf"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  # raises on a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http(s) URL of an OTLP/HTTP collector, "
                "such as http://127.0.0.1:4318/v1/traces"
            )
        if parts.path in ("", "/"):
            parts = parts._replace(path=TRACES_PATH)
        return urlunsplit(parts)
