"""The router's score on ledger records and feedback labels, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import orjson

from gateway.ledger.feedback import Feedback, FeedbackStore
from gateway.ledger.route_data import labelled_requests, scored_traffic
from gateway.ledger.spill import decode, encode
from gateway.ledger.store import LedgerStore
from tests.support import make_record

FEATURES = (0.5, 0.25, 0.125, 0.0, 1.0, 0.333333, 0.0, 0.0, 0.0, 0.0, 1.0, 0.4)


def test_the_router_score_and_inputs_round_trip(store: LedgerStore) -> None:
    scored = make_record(1, route_score=0.8125, route_features=FEATURES)
    plain = make_record(2)
    assert store.insert([scored, plain]) == 2
    back = store.get(scored.request_id)
    assert back is not None
    assert back.route_score == 0.8125 and back.route_features == FEATURES
    plain_back = store.get(plain.request_id)
    assert plain_back is not None and plain_back.route_features is None
    assert scored_traffic(store.engine) == [FEATURES]
    later = scored.finished_at + dt.timedelta(seconds=1)
    assert scored_traffic(store.engine, since=later) == []


def test_journal_lines_written_before_the_upgrade_still_replay() -> None:
    rec = make_record(3, route_score=0.5, route_features=FEATURES)
    assert decode(encode(rec)) == rec
    old = orjson.loads(encode(make_record(4)))
    del old["route_score"], old["route_features"]
    back = decode(orjson.dumps(old))
    assert back.route_score is None and back.route_features is None


def test_feedback_only_for_the_keys_own_requests_last_write_wins(store: LedgerStore) -> None:
    store.insert(
        [make_record(5, key_id="key-a", route_features=FEATURES), make_record(6, key_id="key-b")]
    )
    fb = FeedbackStore(store.engine)
    first = fb.put("key-a", Feedback("req-00000005", 0.0, "bad"))
    assert first is not None and not first.replaced
    again = fb.put("key-a", Feedback("req-00000005", 0.9, None))
    assert again is not None and again.replaced
    assert fb.get("key-a", "req-00000005") == Feedback("req-00000005", 0.9, None)
    assert fb.put("key-a", Feedback("req-00000006", 1.0, "good")) is None  # key-b's
    assert fb.put("key-a", Feedback("req-99999999", 1.0, "good")) is None  # unknown
    assert fb.get("key-a", "req-00000006") is None
    rows = labelled_requests(store.engine)
    assert [(r.request_id, r.quality, r.features) for r in rows] == [
        ("req-00000005", 0.9, FEATURES)
    ]
