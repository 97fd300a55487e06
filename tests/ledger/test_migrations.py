"""Alembic migrations produce exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from gateway.db import make_engine
from gateway.ledger.models import row_values
from gateway.migrations import alembic_config, current_revision, downgrade, load_models, upgrade
from tests.support import ROOT
from tests.support.ledger import make_record


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(ctx, load_models()))
    finally:
        engine.dispose()


def test_upgrade_head_yields_exactly_base_metadata(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert current_revision(engine) == head
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    metadata = load_models()
    assert set(metadata.tables) <= tables
    assert "ledger_records" in tables
    assert _diff(db_url) == []


def test_downgrade_to_base_removes_every_table(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        downgrade(engine, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)  # and back up again
        assert "ledger_records" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_replicas_migrating_at_once_do_not_collide(db_url: str) -> None:
    code = (
        "import sys; from gateway.db import make_engine; "
        "from gateway.migrations import upgrade; upgrade(make_engine(sys.argv[1]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url], cwd=ROOT, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    results = [(p.wait(120), p.stderr.read() if p.stderr else b"") for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], results
    assert _diff(db_url) == []


def test_two_threads_migrating_at_once_do_not_collide(db_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        engine = make_engine(db_url)
        try:
            upgrade(engine)
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert _diff(db_url) == []


def test_alembic_command_line_uses_the_repository_config(db_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={db_url}", "upgrade", "head"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert _diff(db_url) == []


def test_upgrade_over_tables_created_without_alembic(db_url: str) -> None:
    """Key-store tables made by create_all (tests, throwaway setups), or a half-applied
    upgrade on SQLite: migrating again completes instead of failing on 'exists'."""
    engine = make_engine(db_url)
    try:
        metadata = load_models()
        partial = [
            metadata.tables[n]
            for n in ("ledger_records", "teams", "api_keys")
            if n in metadata.tables
        ]
        metadata.create_all(engine, tables=partial)
        upgrade(engine)
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert current_revision(engine) == head
    finally:
        engine.dispose()
    assert _diff(db_url) == []


def test_savings_migration_zeroes_savings_only_where_the_client_named_the_tier(
    db_url: str,
) -> None:
    """0004: a `by_name` record's counterfactual becomes its cost; routed ones keep theirs."""
    engine = make_engine(db_url)
    rows = [
        make_record(0, requested_model="small", route_reason="by_name"),
        make_record(1, requested_model="auto", route_reason="short_prompt"),
        make_record(2, requested_model="small", route_reason="by_name;fallback_from:x"),
    ]
    try:
        upgrade(engine, "0003_key_grace")
        # The columns of that revision only (later ones add more).
        cols = [c["name"] for c in inspect(engine).get_columns("ledger_records")]
        insert = text(
            f"INSERT INTO ledger_records ({', '.join(cols)}) "
            f"VALUES ({', '.join(':' + c for c in cols)})"
        )
        with engine.begin() as conn:
            conn.execute(insert, [{c: row_values(r)[c] for c in cols} for r in rows])
        upgrade(engine, "0004_savings_by_routing")
        with engine.connect() as conn:
            got = {
                r[0]: (r[1], r[2])
                for r in conn.execute(
                    text("SELECT request_id, cost_nusd, counterfactual_nusd FROM ledger_records")
                )
            }
    finally:
        engine.dispose()
    assert got == {
        "req-00000000": (9_000, 9_000),
        "req-00000001": (9_000, 80_000),
        "req-00000002": (9_000, 80_000),
    }
