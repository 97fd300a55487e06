from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings

BASE = """
engines:
  - {name: s0, url: "http://127.0.0.1:9101", tier: small, model: m-small}
  - {name: l0, url: "http://127.0.0.1:9102", tier: large, model: m-large}
models:
  - {name: small, tier: small, aliases: [gpt-4o-mini]}
  - {name: large, tier: large}
  - {name: auto, auto: true}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_loads_yaml_and_defaults(tmp_path: Path) -> None:
    s = Settings.load(write(tmp_path, BASE))
    assert [e.name for e in s.engines] == ["s0", "l0"]
    assert s.server.max_body_bytes == 4 * 1024 * 1024
    assert s.models[0].aliases == ["gpt-4o-mini"]


def test_routing_state_file_defaults_to_the_data_dir_and_env_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    s = Settings.load(write(tmp_path, BASE))
    assert s.routing.state_file == str(tmp_path / "data" / "tollgate" / "routing-state.json")
    assert s.routing.state_poll_s == 2.0
    monkeypatch.setenv("TOLLGATE_ROUTING__STATE_FILE", "/srv/shared/routing.json")
    assert Settings.load(write(tmp_path, BASE)).routing.state_file == "/srv/shared/routing.json"


def test_env_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLGATE_SERVER__PORT", "9999")
    s = Settings.load(write(tmp_path, BASE + "server: {port: 8001}\n"))
    assert s.server.port == 9999


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("server: {port: 99999}\n", "server.port"),
        ("server: {max_body_bytes: nope}\n", "server.max_body_bytes"),
        ("quotas: {backend: memcached}\n", "quotas.backend"),
        ("bogus_section: 1\n", "bogus_section"),
        ("routing: {state_poll_s: 0}\n", "routing.state_poll_s"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.load(write(tmp_path, BASE + extra))
    assert field in str(exc.value)


def test_model_tier_without_engine_is_rejected(tmp_path: Path) -> None:
    text = BASE.replace("{name: large, tier: large}", "{name: large, tier: huge}")
    with pytest.raises(ConfigError, match=r"models\[1\]\.tier: .*'huge'"):
        Settings.load(write(tmp_path, text))


def test_engine_url_must_be_http(tmp_path: Path) -> None:
    text = BASE.replace('"http://127.0.0.1:9101"', '"file:///etc/passwd"')
    with pytest.raises(ConfigError, match=r"engines\.0"):
        Settings.load(write(tmp_path, text))


def test_engine_pointing_at_gateway_is_a_loop(tmp_path: Path) -> None:
    text = BASE.replace("9101", "8000")
    with pytest.raises(ConfigError, match="loop"):
        Settings.load(write(tmp_path, text))


def test_duplicate_model_names(tmp_path: Path) -> None:
    text = BASE.replace("aliases: [gpt-4o-mini]", "aliases: [large]")
    with pytest.raises(ConfigError, match="defined twice"):
        Settings.load(write(tmp_path, text))


def test_workers_need_redis(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="redis"):
        Settings.load(write(tmp_path, BASE + "server: {workers: 2}\n"))


@pytest.mark.parametrize(
    ("url", "why"),
    [("http://:s3cret@cache:6379", "starts with"), ("redis://:s3cret@cache/zero", "a number")],
)
def test_a_bad_redis_url_is_named_without_its_password(tmp_path: Path, url: str, why: str) -> None:
    text = BASE + f"quotas: {{backend: redis, redis_url: '{url}'}}\n"
    with pytest.raises(ConfigError, match="redis_url") as exc:
        Settings.load(write(tmp_path, text))
    assert why in str(exc.value) and "s3cret" not in str(exc.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(tmp_path / "missing.yaml")


def test_shipped_config_is_valid() -> None:
    s = Settings.load(Path(__file__).parents[2] / "configs" / "tollgate.yaml")
    assert {e.tier for e in s.engines} == {"small", "large"}
    assert {m.name for m in s.models} >= {"small", "large", "auto"}


ENGINE_ENTRY = (
    "engines:\n  - {name: s, tier: small, model: m, %s}\nmodels:\n  - {name: small, tier: small}\n"
)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ('url: "http://a:1", urls: ["http://b:1"]', "exactly one of url"),
        ("discover: dns", "exactly one of url"),
        ('urls: ["http://b:1"], discover: dns', "discover: dns needs url"),
        ('urls: ["ftp://b:1"]', "must be http"),
        ('url: "http://a:1", api_key_env: "9BAD"', "api_key_env"),
        ('url: "http://a:1", api_key_env: TG_TEST_UNSET_KEY', "TG_TEST_UNSET_KEY is not set"),
    ],
)
def test_engine_entry_errors(tmp_path: Path, fields: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(write(tmp_path, ENGINE_ENTRY % fields))


def test_engine_api_key_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_TEST_ENGINE_KEY", "sekrit")
    s = Settings.load(
        write(tmp_path, ENGINE_ENTRY % 'url: "http://a:1", api_key_env: TG_TEST_ENGINE_KEY')
    )
    assert s.engines[0].api_key is not None
    assert s.engines[0].api_key.get_secret_value() == "sekrit"
    assert "sekrit" not in repr(s)
    with pytest.raises(ConfigError, match="not both"):
        Settings.load(
            write(
                tmp_path,
                ENGINE_ENTRY % 'url: "http://a:1", api_key: x, api_key_env: TG_TEST_ENGINE_KEY',
            )
        )


def test_url_list_names_must_not_clash(tmp_path: Path) -> None:
    text = (
        "engines:\n"
        '  - {name: s, tier: small, model: m, urls: ["http://a:1", "http://b:1"]}\n'
        '  - {name: s-1, tier: small, model: m, url: "http://c:1"}\n'
    )
    with pytest.raises(ConfigError, match="duplicate engine name"):
        Settings.load(write(tmp_path, text))


def test_url_list_loop_is_refused(tmp_path: Path) -> None:
    text = (
        "server: {host: 127.0.0.1, port: 8000}\n"
        "engines:\n"
        '  - {name: s, tier: small, model: m, urls: ["http://a:1", "http://127.0.0.1:8000"]}\n'
    )
    with pytest.raises(ConfigError, match="gateway itself"):
        Settings.load(write(tmp_path, text))


def test_the_ledger_defaults_to_the_users_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any user can run the shipped config: nothing under /var, nothing in the checkout.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    settings = Settings.load(Path("configs/tollgate.yaml"))
    assert settings.ledger.url == f"sqlite:///{tmp_path}/data/tollgate/ledger.db"
    assert settings.ledger.spill_dir == str(tmp_path / "data" / "tollgate" / "spill")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().ledger.url.endswith(f"{tmp_path}/home/.local/share/tollgate/ledger.db")


def test_serve_says_where_the_ledger_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import _where

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert _where(Settings()) == (
        f"SQLite at {tmp_path}/tollgate/ledger.db, journal and spill files in "
        f"{tmp_path}/tollgate/spill"
    )
    pg = Settings(ledger={"url": "postgresql://u:secret@db.example:5432/ledger"})
    assert _where(pg) == "postgresql at db.example:5432/ledger"
