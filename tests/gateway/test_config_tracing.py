"""The ``tracing`` section: off by default, its exporter settings checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings
from gateway.request.otel import OtelTracing
from gateway.request.tracing import NullTracing, build_tracing

BASE = """
engines:
  - {name: s0, url: "http://127.0.0.1:9101", tier: small, model: m-small}
models:
  - {name: small, tier: small}
"""


def load(tmp_path: Path, tracing: str = "") -> Settings:
    path = tmp_path / "cfg.yaml"
    path.write_text(BASE + tracing)
    return Settings.load(path)


def test_off_by_default_builds_the_null_tracer(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.tracing.enabled is False
    assert s.tracing.endpoint == "http://127.0.0.1:4318/v1/traces"
    assert isinstance(build_tracing(s.tracing), NullTracing)


def test_enabled_from_yaml_builds_an_otlp_tracer(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "tracing: {enabled: true, endpoint: 'https://otel.example:4318', "
        "service_name: gw-eu, sample_ratio: 0.25}\n",
    )
    t = s.tracing
    # A bare host:port gets the OTLP/HTTP traces path.
    assert (t.endpoint, t.service_name, t.sample_ratio) == (
        "https://otel.example:4318/v1/traces", "gw-eu", 0.25,
    )  # fmt: skip
    tracing = build_tracing(t)
    try:
        assert isinstance(tracing, OtelTracing)
    finally:
        tracing.shutdown()


def test_environment_turns_it_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLGATE_TRACING__ENABLED", "true")
    monkeypatch.setenv("TOLLGATE_TRACING__ENDPOINT", "http://collector:4318/v1/traces")
    s = load(tmp_path)
    assert s.tracing.enabled
    assert s.tracing.endpoint == "http://collector:4318/v1/traces"


@pytest.mark.parametrize(
    ("tracing", "message"),
    [
        ("{endpoint: 'collector:4318'}", "tracing.endpoint: Value error, must be an http(s) URL"),
        ("{endpoint: 'ftp://collector/v1/traces'}", "tracing.endpoint: Value error, must be"),
        ("{endpoint: 'http://:4318/v1/traces'}", "tracing.endpoint: Value error, must be"),
        ("{endpoint: 'http://collector:port/v1/traces'}", "tracing.endpoint: Value error"),
        ("{protocol: grpc}", "tracing.protocol: Value error, grpc is not supported"),
        ("{protocol: http/json}", "tracing.protocol: Input should be 'http/protobuf'"),
        ("{sample_ratio: 1.5}", "tracing.sample_ratio: Input should be less than or equal to 1"),
        ("{service_name: ''}", "tracing.service_name: String should have at least 1 character"),
        ("{export_timeout_s: 0}", "tracing.export_timeout_s: Input should be greater than 0"),
        ("{exporter: zipkin}", "tracing.exporter: Extra inputs are not permitted"),
    ],
)
def test_a_bad_tracing_value_is_a_config_error_naming_the_field(
    tmp_path: Path, tracing: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"tracing: {tracing}\n")
    assert message in str(info.value)
