"""The ``scored`` balancer end to end: conversations stay on the replica that has them.

A real gateway (``routing.balancer: scored``), the official ``openai`` client and two
stand-in engines of one tier. Each test states the expected outcome.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support import serve_in_thread
from tests.support.fleet import Engines, client, settings, spec
from tests.support.standin import stats


def test_turns_of_a_conversation_follow_their_prefix_and_the_reason_says_why(
    fleet: Engines, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Expected: four conversations with their own long system prompts spread over both
    replicas (no prefix matches yet, equal load); every later turn goes where the first
    went; the route reason carries ``replica=score:...,w:...``, and a debug log line
    holds the weights and every replica's score."""
    routing = {"fallback": False, "balancer": "scored", "scorer": {"w_prefix": 2.0}}
    cfg = settings(tmp_path, [spec(fleet, "small-a"), spec(fleet, "small-b")], routing)
    homes: dict[int, str] = {}
    with (
        serve_in_thread(cfg) as gw,
        caplog.at_level(logging.DEBUG, logger="gateway.routing.scorer"),
    ):
        c = client(gw)
        convos: list[list[ChatCompletionMessageParam]] = [
            [{"role": "system", "content": f"You are assistant number {i}. " * 60}]
            for i in range(4)
        ]
        for turn in range(3):
            for i, msgs in enumerate(convos):
                msgs.append({"role": "user", "content": f"question {turn} of chat {i}"})
                raw = c.chat.completions.with_raw_response.create(
                    model="small", messages=msgs, max_tokens=4
                )
                engine = raw.headers["x-tollgate-engine"]
                reason = raw.headers["x-tollgate-route-reason"]
                assert reason.startswith("by_name;replica=score:")
                assert reason.endswith(",w:2/0.5/0.25/0.5")
                if turn == 0:
                    homes[i] = engine
                else:
                    assert engine == homes[i], (i, turn)
                    assert float(reason.split("score:")[1].split(",")[0]) > 1.0  # matched
                answer = raw.parse().choices[0].message.content or ""
                msgs.append({"role": "assistant", "content": answer})
    assert sorted(homes.values()) == ["small-a", "small-a", "small-b", "small-b"]
    assert stats(fleet["small-a"])["received"] == stats(fleet["small-b"])["received"] == 6
    logged = [r for r in caplog.records if r.message == "replica scores"]
    assert len(logged) == 12
    assert logged[-1].weights == {"prefix": 2.0, "queue": 0.5, "kv": 0.25, "inflight": 0.5}
    assert set(logged[-1].scores) == {"small-a", "small-b"}
