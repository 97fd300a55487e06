"""Redis quotas need a ledger every replica writes, or an explicit partial restore."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings

BASE = """
engines:
  - {name: s0, url: "http://127.0.0.1:9101", tier: small, model: m-small}
models:
  - {name: small, tier: small}
quotas: {backend: redis, redis_url: "redis://127.0.0.1:6379/0"}
"""


def load(tmp_path: Path, ledger: str) -> Settings:
    path = tmp_path / "cfg.yaml"
    path.write_text(BASE + f"ledger: {ledger}\n")
    return Settings.load(path)


def test_redis_quotas_with_a_sqlite_ledger_are_refused_naming_the_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, f"{{url: 'sqlite:///{tmp_path}/l.db'}}")
    message = str(exc.value)
    for field in ("quotas.backend", "ledger.url", "ledger.partial_restore_ok"):
        assert field in message, message


def test_the_default_ledger_is_sqlite_and_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ledger\.url"):
        load(tmp_path, "{}")


@pytest.mark.parametrize(
    "ledger",
    [
        "{url: 'sqlite:////tmp/l.db', partial_restore_ok: true}",  # accepted explicitly
        "{url: 'postgresql://u:p@db:5432/tollgate'}",  # one ledger every replica writes
        "{enabled: false}",  # no ledger: nothing is restored, nothing claimed
    ],
)
def test_accepted_setups(tmp_path: Path, ledger: str) -> None:
    settings = load(tmp_path, ledger)
    assert settings.quotas.backend == "redis"


def test_local_quotas_keep_their_sqlite_ledger(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(BASE.replace("backend: redis", "backend: local") + "ledger: {}\n")
    settings = Settings.load(path)
    assert settings.ledger.per_process and not settings.ledger.partial_restore_ok


def test_the_environment_can_accept_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLGATE_LEDGER__PARTIAL_RESTORE_OK", "true")
    assert load(tmp_path, "{}").ledger.partial_restore_ok
