"""The ledger store on SQLite and PostgreSQL: idempotent inserts, exact round trips."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from gateway.ledger.store import LedgerRejectedError, LedgerStore, LedgerUnavailableError
from tests.ledger.factories import make_record, records
from tests.support import free_port


def test_insert_round_trips_every_field(store: LedgerStore) -> None:
    rec = make_record(
        1,
        team=None,
        ttft_ms=None,
        error_code="upstream_stream_error",
        cost_nusd=9_223_372_036,  # > 2^31: BIGINT, not INTEGER
        started_at=dt.datetime(2026, 3, 14, 23, 59, 59, 999_999, tzinfo=dt.UTC),
        finished_at=dt.datetime(2026, 3, 15, 1, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    )
    assert store.insert([rec]) == 1
    back = store.get(rec.request_id)
    assert back is not None
    assert back == dataclasses.replace(rec, finished_at=rec.finished_at.astimezone(dt.UTC))
    assert back.finished_at.tzinfo is not None


def test_insert_is_idempotent_by_request_id(store: LedgerStore) -> None:
    batch = records(50)
    assert store.insert(batch) == 50
    assert store.insert(batch[10:20] + records(5, start=50)) == 5
    # duplicates inside one statement are skipped too
    assert store.insert([make_record(99), make_record(99), make_record(98)]) == 2
    assert store.count() == 57
    assert sorted(store.request_ids()) == sorted({r.request_id for r in store.all_records()})


def test_the_day_column_is_the_utc_day_of_finishing(store: LedgerStore) -> None:
    late = dt.datetime(2026, 3, 14, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    store.insert([make_record(1, finished_at=late)])
    with store.engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT day FROM ledger_records")).scalar_one() == "2026-03-15"


def test_a_bad_value_is_rejected_not_retried(store: LedgerStore) -> None:
    naive = make_record(1, finished_at=dt.datetime(2026, 1, 1))
    with pytest.raises(LedgerRejectedError):
        store.insert([naive])
    assert store.count() == 0


def test_unmigrated_database_is_unavailable(db_url: str) -> None:
    s = LedgerStore.from_url(db_url)
    try:
        with pytest.raises(LedgerUnavailableError):
            s.insert([make_record(1)])
    finally:
        s.dispose()


def test_unreachable_server_is_unavailable() -> None:
    s = LedgerStore.from_url(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    try:
        with pytest.raises(LedgerUnavailableError) as info:
            s.ping()
        assert info.value.status_code == 503
        assert "127.0.0.1" not in info.value.message  # no connection details to clients
    finally:
        s.dispose()
