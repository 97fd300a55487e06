"""Rollouts end to end: shadow copies recorded apart, sticky A/B by key.

A real gateway, the official ``openai`` client, and stand-in engines
(``engines.standin``; the fleet is ``tests/support/fleet.py``). Each test states the
expected outcome.
"""

from __future__ import annotations

from pathlib import Path

from tests.support import ListRecorder, serve_in_thread
from tests.support.fleet import (
    MSGS,
    Engines,
    client,
    settings,
    spec,
    until,
)
from tests.support.standin import stats

# ---------------------------------------------------------------- rollouts


def test_shadow_copy_is_recorded_apart_and_not_billed_to_the_key(
    fleet: Engines, tmp_path: Path
) -> None:
    """Expected: the client is answered by large-a; large-b gets a copy whose answer is
    dropped and whose cost is recorded under the pseudo key 'shadow'."""
    recorder = ListRecorder()
    routing = {"rollouts": {"large": {"shadow": {"engine": "large-b", "sample": 1.0}}}}
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "large-a"),
                              spec(fleet, "large-b", version="v2")], routing)  # fmt: skip
    with serve_in_thread(cfg, recorder=recorder) as gw:
        raw = client(gw).chat.completions.with_raw_response.create(
            model="large", messages=MSGS, max_tokens=3
        )
        assert raw.parse().choices[0].message.content == " tok1 tok2 tok3"
        until(lambda: len(recorder.records) == 2)
    by_status = {r.status: r for r in recorder.records}
    assert by_status["ok"].engine == "large-a" and by_status["ok"].key_id == "static-0"
    shadow = by_status["shadow"]
    assert (shadow.engine, shadow.key_id, shadow.completion_tokens) == ("large-b", "shadow", 3)
    assert shadow.cost_nusd > 0 and shadow.request_id.endswith(":shadow")
    assert stats(fleet["large-a"])["received"] == 1 == stats(fleet["large-b"])["received"]


def test_sticky_ab_by_key(fleet: Engines, tmp_path: Path) -> None:
    """Expected: with a 50/50 sticky split, one key is always served by the same version."""
    routing = {"rollouts": {"large": {"split": "sticky"}}}
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "large-a", version="v1"),
                              spec(fleet, "large-b", version="v2")], routing)  # fmt: skip
    with serve_in_thread(cfg) as gw:
        c = client(gw)
        for _ in range(6):
            c.chat.completions.create(model="large", messages=MSGS, max_tokens=1)
    counts = sorted([stats(fleet["large-a"])["received"], stats(fleet["large-b"])["received"]])
    assert counts == [0, 6]
